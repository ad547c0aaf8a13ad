// The register tile of the quantized GEMM (qgemm_cpu.cc), written once for AVX2 and AVX-512
// VNNI. No include guard on purpose: qgemm_cpu.cc includes it once per ISA inside a namespace
// that defines FASTLM_QTILE_TARGET (the target attribute) and `dot(w, x)` (the 8 int32 lanes
// w[2l] * x[2l] + w[2l+1] * x[2l+1] of 16 int16 pairs). The arithmetic per output element is the
// one cpu/qgemm_cpu.h documents, whatever MR and NR are.
//
// A tile computes y for MR rows of x against `cols` weight rows, NR weight rows at a time: the
// MR x NR accumulators stay in registers, each decoded weight block is reused MR times and each
// activation block NR times. The NR rows of a pass are `spread` rows apart (qgemm_cpu.cc's
// QTileFn): adjacent when spread is 1, else rows c0 + c * spread for c0 in [0, spread).
// Formats whose scales unpack a super-block at a time (F::super_scales, F::dm_index).
template <class F>
inline constexpr bool kSuper = requires(const uint8_t* sb, float* d) { F::super_scales(sb, d); };

// Block b's {d, m, 0, 0} (scales4's layout) from its super-block's F::super_scales.
template <class F>
FASTLM_INLINE __m128 super_dm(const float* sup, int64_t b) {
  const int j = static_cast<int>(b % 8);
  return _mm_setr_ps(sup[F::dm_index(j, 0)], sup[F::dm_index(j, 1)], 0.0f, 0.0f);
}

template <class F, int MR, int NR>
FASTLM_QTILE_TARGET void qtile(const XBlock* x, int64_t ldx, const uint8_t* w, size_t row_bytes,
                               int64_t nb, const float* bias, float* y, int64_t ldy, int64_t cols,
                               int64_t spread) {
  const int64_t gap = spread > 1 ? spread : 1;  // rows between the NR rows of a pass
  const int64_t passes = spread > 1 ? spread : cols / NR;
  const int64_t ahead = (spread > 1 ? kStreamAhead : kAhead) * static_cast<int64_t>(row_bytes);
  for (int64_t pass = 0; pass < passes; ++pass) {
    static_assert(MR * NR <= 8, "the min terms of a tile share one register");
    const int64_t c0 = spread > 1 ? pass : pass * NR;
    __m256 acc[MR][NR];
    // Lane r * NR + c accumulates fma(mw_c, sx_r) for (row r, column c): one register for
    // the whole tile, not one per output (those spilled to the stack in the 4 x 2 tile).
    __m256 summ = _mm256_setzero_ps();
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
      for (int c = 0; c < NR; ++c) acc[r][c] = _mm256_setzero_ps();
    const uint8_t* rows = w + c0 * row_bytes;
    alignas(32) float sup[NR][16];  // kSuper formats: the current super-block's scales per row
    for (int64_t b = 0; b < nb; ++b) {
      __m256i lo[NR], hi[NR];
      __m128 dm[NR];
      if constexpr (kSuper<F>) {
        // Super-block formats: the NR rows' 8 blocks of scales at once (not per 32-block).
        if (b % 8 == 0)
          for (int c = 0; c < NR; ++c)
            F::super_scales(rows + c * gap * row_bytes + b / 8 * F::kBytes, sup[c]);
      }
#pragma GCC unroll 8
      for (int c = 0; c < NR; ++c) {
        const uint8_t* row = rows + c * gap * row_bytes;
        // The same block of the row `ahead` on (a later pass), while this one computes.
        _mm_prefetch(reinterpret_cast<const char*>(row + ahead + b * F::kBytes / F::kPer),
                     _MM_HINT_T0);
        if constexpr (kSuper<F>) {
          dm[c] = super_dm<F>(sup[c], b);
        } else {
          dm[c] = scales4<F>(row, b);
        }
        F::values16(row, b, &lo[c], &hi[c]);
      }
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const XBlock& xb = x[r * ldx + b];
        const __m256i xlo = _mm256_load_si256(reinterpret_cast<const __m256i*>(xb.q));
        const __m256i xhi = _mm256_load_si256(reinterpret_cast<const __m256i*>(xb.q + 16));
        const __m256 dx = _mm256_broadcast_ss(&xb.d);
#pragma GCC unroll 8
        for (int c = 0; c < NR; ++c) {
          if constexpr (F::kHalfScales) {
            // Q6_K: elements 0..15 and 16..31 have their own scales (dm lanes 0 and 1).
            const __m256 s0 = _mm256_mul_ps(_mm256_broadcastss_ps(dm[c]), dx);
            const __m256 s1 = _mm256_mul_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dm[c])), dx);
            acc[r][c] = _mm256_fmadd_ps(s0, _mm256_cvtepi32_ps(dot(lo[c], xlo)), acc[r][c]);
            acc[r][c] = _mm256_fmadd_ps(s1, _mm256_cvtepi32_ps(dot(hi[c], xhi)), acc[r][c]);
          } else {
            const __m256i p = dot2(lo[c], xlo, hi[c], xhi);
            const __m256 scale = _mm256_mul_ps(_mm256_broadcastss_ps(dm[c]), dx);
            acc[r][c] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), acc[r][c]);
          }
        }
      }
      if constexpr (F::kMin) {
        // mw of each lane's column times sx of its row (dm[c] = {dw, mw, ..}, s8 = {0, sx, ..}),
        // gathered in registers (through memory the 16-byte reload missed store forwarding).
        // mws holds the NR minima at lanes mw0 + c.
        __m128 mws;
        int mw0;
        if constexpr (NR == 1) {
          mws = dm[0];
          mw0 = 1;
        } else if constexpr (NR == 2) {
          mws = _mm_unpacklo_ps(dm[0], dm[1]);  // {d0, d1, m0, m1}
          mw0 = 2;
        } else {
          static_assert(NR == 4, "qtile: NR is 1, 2 or 4");
          mws = _mm_movehl_ps(_mm_unpacklo_ps(dm[2], dm[3]), _mm_unpacklo_ps(dm[0], dm[1]));
          mw0 = 0;
        }
        const auto sx = [&](int r) { return r < MR ? x[r * ldx + b].s8[1] : 0.0f; };
        const __m128 sxs = _mm_setr_ps(sx(0), sx(1), sx(2), sx(3));
        // (Lanes past MR * NR are never read; % 4 keeps their index in the defined half.)
        const __m256i col = _mm256_add_epi32(
            _mm256_set1_epi32(mw0),
            _mm256_setr_epi32(0 % NR, 1 % NR, 2 % NR, 3 % NR, 4 % NR, 5 % NR, 6 % NR, 7 % NR));
        const __m256i row = _mm256_setr_epi32(0 / NR % 4, 1 / NR % 4, 2 / NR % 4, 3 / NR % 4,
                                              4 / NR % 4, 5 / NR % 4, 6 / NR % 4, 7 / NR % 4);
        const __m256 mwv = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(mws), col);
        const __m256 sxv = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(sxs), row);
        summ = _mm256_fmadd_ps(mwv, sxv, summ);
      }
    }
    float sm[8];
    _mm256_storeu_ps(sm, summ);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
      for (int c = 0; c < NR; ++c) {
        const int64_t o = c0 + c * gap;
        y[r * ldy + o] =
            simd::hsum8(acc[r][c]) + (F::kMin ? sm[r * NR + c] : 0.0f) + (bias ? bias[o] : 0.0f);
      }
  }
}

// The passes of a four-row GEMV over `cols` rows: each pass takes rows first_row(pass) + c * gap
// (c < 4), adjacent (spread 1) or four streams spread rows apart; each row's block `ahead` bytes
// on is prefetched.
struct GemvPasses {
  int64_t gap, passes, stride, ahead;
  GemvPasses(size_t row_bytes, int64_t cols, int64_t spread)
      : gap(spread > 1 ? spread : 1),
        passes(spread > 1 ? spread : cols / 4),
        stride(gap * static_cast<int64_t>(row_bytes)),
        ahead((spread > 1 ? kStreamAhead : kAhead) * static_cast<int64_t>(row_bytes)) {}
  int64_t first_row(int64_t pass) const { return gap > 1 ? pass : pass * 4; }
};

// Block J of a super-block for qgemv_super's four rows (J known at compile time: immediate
// shifts, fixed offsets).
template <class F, int J>
FASTLM_QTILE_TARGET FASTLM_INLINE void super_block(const XBlock* x, const uint8_t* const* sbs,
                                                   const float (*dw)[16], const float (*mins)[8],
                                                   __m256* acc, __m128& summ) {
  const XBlock& xb = x[J];
  const __m256i xlo = _mm256_load_si256(reinterpret_cast<const __m256i*>(xb.q));
  const __m256i xhi = _mm256_load_si256(reinterpret_cast<const __m256i*>(xb.q + 16));
  const __m256 dx = _mm256_broadcast_ss(&xb.d);
#pragma GCC unroll 4
  for (int c = 0; c < 4; ++c) {
    __m256i lo, hi;
    F::template block16<J>(sbs[c], &lo, &hi);
    if constexpr (F::kHalfScales) {
      const __m256 s0 = _mm256_mul_ps(_mm256_broadcast_ss(&dw[c][F::dm_index(J, 0)]), dx);
      const __m256 s1 = _mm256_mul_ps(_mm256_broadcast_ss(&dw[c][F::dm_index(J, 1)]), dx);
      acc[c] = _mm256_fmadd_ps(s0, _mm256_cvtepi32_ps(dot(lo, xlo)), acc[c]);
      acc[c] = _mm256_fmadd_ps(s1, _mm256_cvtepi32_ps(dot(hi, xhi)), acc[c]);
    } else {
      const __m256 scale = _mm256_mul_ps(_mm256_broadcast_ss(&dw[c][F::dm_index(J, 0)]), dx);
      acc[c] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(dot2(lo, xlo, hi, xhi)), acc[c]);
    }
  }
  // mins[J % 4] holds the four rows' m of blocks J % 4 (lanes 0..3) and J % 4 + 4 (4..7).
  if constexpr (F::kMin)
    summ = _mm_fmadd_ps(_mm_load_ps(mins[J % 4] + 4 * (J / 4)), _mm_broadcast_ss(&xb.s8[1]), summ);
}

template <class F, int... J>
FASTLM_QTILE_TARGET FASTLM_INLINE void super_blocks(const XBlock* x, const uint8_t* const* sbs,
                                                    const float (*dw)[16], const float (*mins)[8],
                                                    __m256* acc, __m128& summ,
                                                    std::integer_sequence<int, J...>) {
  (super_block<F, J>(x, sbs, dw, mins, acc, summ), ...);
}

// The decode GEMV of the super-block formats with a scale per 16 (Q6_K, Q3_K; 8 32-blocks): the
// same arithmetic as qtile<F, 1, 4>, but each row's scales are unpacked once per super-block
// (F::super_scales: the 32-blocks' dw = d * sc, and mw) instead of once per 32-block, and the
// minimum terms of the four rows run in the lanes of one register (lane c is row c's summ, the
// same fma chain over the blocks). Rows adjacent, or four streams (spread).
template <class F>
FASTLM_QTILE_TARGET void qgemv_super(const XBlock* x, int64_t, const uint8_t* w, size_t row_bytes,
                                     int64_t nb, const float* bias, float* y, int64_t, int64_t cols,
                                     int64_t spread) {
  static_assert(F::kPer == 8, "super-block formats only");
  const GemvPasses g(row_bytes, cols, spread);
  const int64_t gap = g.gap, stride = g.stride, ahead = g.ahead;
  for (int64_t pass = 0; pass < g.passes; ++pass) {
    const int64_t c0 = g.first_row(pass);
    const uint8_t* rows[4];
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) rows[c] = w + c0 * row_bytes + c * stride;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    __m128 summ = _mm_setzero_ps();  // lane c: row c's minimum terms
    for (int64_t s = 0; s < nb / 8; ++s) {
      // Per row: the 8 blocks' scales (F::super_scales); mins: the rows' m transposed.
      alignas(32) float dw[4][16];
      alignas(32) float mins[4][8];
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) {
        const uint8_t* sb = rows[c] + s * F::kBytes;
        for (int64_t o = 0; o < static_cast<int64_t>(F::kBytes); o += 64)
          _mm_prefetch(reinterpret_cast<const char*>(sb + ahead + o), _MM_HINT_NTA);
        F::super_scales(sb, dw[c]);
      }
      if constexpr (F::kMin) {
        // m of block j is dw[c][8 + j]: a 4 x 8 transpose in registers (through scalar stores
        // the vector reloads missed store forwarding).
        const __m256 m0 = _mm256_load_ps(dw[0] + 8), m1 = _mm256_load_ps(dw[1] + 8);
        const __m256 m2 = _mm256_load_ps(dw[2] + 8), m3 = _mm256_load_ps(dw[3] + 8);
        const __m256 t0 = _mm256_unpacklo_ps(m0, m1), t1 = _mm256_unpackhi_ps(m0, m1);
        const __m256 t2 = _mm256_unpacklo_ps(m2, m3), t3 = _mm256_unpackhi_ps(m2, m3);
        _mm256_store_ps(mins[0], _mm256_shuffle_ps(t0, t2, 0x44));  // blocks 0 | 4
        _mm256_store_ps(mins[1], _mm256_shuffle_ps(t0, t2, 0xee));  // blocks 1 | 5
        _mm256_store_ps(mins[2], _mm256_shuffle_ps(t1, t3, 0x44));  // blocks 2 | 6
        _mm256_store_ps(mins[3], _mm256_shuffle_ps(t1, t3, 0xee));  // blocks 3 | 7
      }
      const uint8_t* sbs[4];
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) sbs[c] = rows[c] + s * F::kBytes;
      super_blocks<F>(x + s * 8, sbs, dw, mins, acc, summ, std::make_integer_sequence<int, 8>{});
    }
    alignas(16) float sm[4];
    _mm_store_ps(sm, summ);
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
      const int64_t o = c0 + c * gap;
      y[o] = simd::hsum8(acc[c]) + (F::kMin ? sm[c] : 0.0f) + (bias ? bias[o] : 0.0f);
    }
  }
}

// The one-row tile of F: the GEMV above, the generic tile for any other format.
template <class F>
constexpr QTileFn decode_tile() {
  if constexpr (kSuper<F>) {
    return &qgemv_super<F>;
  } else {
    return &qtile<F, 1, 4>;
  }
}

// ---- Block sums (the second order of cpu/qgemm_cpu.h, the kBlockSum formats) ----

// Block b's scales of four weight rows: lane c of d and m for rows[c].
template <class F>
FASTLM_QTILE_TARGET FASTLM_INLINE void scales4rows(const uint8_t* const* rows, int64_t b, __m128* d,
                                                   __m128* m) {
  if constexpr (F::kPer == 1) {
    // f16 d heads each block (then f16 m where it is stored; other bytes of the block where not,
    // never read as m: no minimum term then): one conversion, the even and the odd lanes.
    int32_t u[4];
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) std::memcpy(&u[c], rows[c] + b * F::kBytes, 4);
    const __m256 a = _mm256_cvtph_ps(_mm_setr_epi32(u[0], u[1], u[2], u[3]));
    const __m128 lo = _mm256_castps256_ps128(a), hi = _mm256_extractf128_ps(a, 1);
    *d = _mm_shuffle_ps(lo, hi, 0x88);
    *m = _mm_shuffle_ps(lo, hi, 0xdd);
  } else {
    alignas(16) float dd[4], mm[4];
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
      const __m128 s = scales4<F>(rows[c], b);
      dd[c] = _mm_cvtss_f32(s);
      mm[c] = _mm_cvtss_f32(_mm_movehdup_ps(s));
    }
    *d = _mm_load_ps(dd);
    *m = _mm_load_ps(mm);
  }
}

// Four vectors' lanes summed by pairs of unpacks and adds (single-uop shuffles; vphaddd costs
// more on Zen 3): {p0..p3's lanes 0..3 summed | their lanes 4..7 summed}.
FASTLM_QTILE_TARGET FASTLM_INLINE __m256i fold4(__m256i p0, __m256i p1, __m256i p2, __m256i p3) {
  const __m256i a = _mm256_add_epi32(_mm256_unpacklo_epi32(p0, p1), _mm256_unpackhi_epi32(p0, p1));
  const __m256i b = _mm256_add_epi32(_mm256_unpacklo_epi32(p2, p3), _mm256_unpackhi_epi32(p2, p3));
  return _mm256_add_epi32(_mm256_unpacklo_epi64(a, b), _mm256_unpackhi_epi64(a, b));
}

// Lane c: the sum of the 8 int32 lanes of p[c] (exact).
FASTLM_QTILE_TARGET FASTLM_INLINE __m128i sum4x8(__m256i p0, __m256i p1, __m256i p2, __m256i p3) {
  const __m256i q = fold4(p0, p1, p2, p3);
  return _mm_add_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
}

// Lane c: the sum of p[c]'s 8 lanes (exact int32).
FASTLM_QTILE_TARGET FASTLM_INLINE __m256i sum8x8(const __m256i* p) {
  const __m256i q0 = fold4(p[0], p[1], p[2], p[3]), q1 = fold4(p[4], p[5], p[6], p[7]);
  return _mm256_add_epi32(_mm256_permute2x128_si256(q0, q1, 0x20),
                          _mm256_permute2x128_si256(q0, q1, 0x31));
}

// One block of four weight rows (values lo / hi, scales d / m in lanes) against MR rows of x
// (x[r * ldx]): rows of x in pairs, lanes {row r's four outputs | row r + 1's} (acc2), so eight
// outputs share one lane reduction and one set of float operations; an odd last row alone (acc1).
template <class F, int MR>
FASTLM_QTILE_TARGET FASTLM_INLINE void lanes_step(const XBlock* x, int64_t ldx, const __m256i* lo,
                                                  const __m256i* hi, __m128 d, __m128 m,
                                                  __m256* acc2, __m128& acc1) {
#pragma GCC unroll 2
  for (int i = 0; i < MR / 2; ++i) {
    const XBlock& x0 = x[2 * i * ldx];
    const XBlock& x1 = x[(2 * i + 1) * ldx];
    __m256i p[8];
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const XBlock& xb = h ? x1 : x0;
      const __m256i xlo = _mm256_load_si256(reinterpret_cast<const __m256i*>(xb.q));
      const __m256i xhi = _mm256_load_si256(reinterpret_cast<const __m256i*>(xb.q + 16));
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) p[4 * h + c] = dot2(lo[c], xlo, hi[c], xhi);
    }
    const __m256 dx = _mm256_set_m128(_mm_broadcast_ss(&x1.d), _mm_broadcast_ss(&x0.d));
    const __m256 s = _mm256_mul_ps(_mm256_set_m128(d, d), dx);
    acc2[i] = _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(sum8x8(p)), acc2[i]);
    if constexpr (F::kMin) {
      const __m256 sx = _mm256_set_m128(_mm_broadcast_ss(&x1.s8[1]), _mm_broadcast_ss(&x0.s8[1]));
      acc2[i] = _mm256_fmadd_ps(_mm256_set_m128(m, m), sx, acc2[i]);
    }
  }
  if constexpr (MR % 2 == 1) {
    const XBlock& xb = x[(MR - 1) * ldx];
    const __m256i xlo = _mm256_load_si256(reinterpret_cast<const __m256i*>(xb.q));
    const __m256i xhi = _mm256_load_si256(reinterpret_cast<const __m256i*>(xb.q + 16));
    const __m128i isum = sum4x8(dot2(lo[0], xlo, hi[0], xhi), dot2(lo[1], xlo, hi[1], xhi),
                                dot2(lo[2], xlo, hi[2], xhi), dot2(lo[3], xlo, hi[3], xhi));
    const __m128 s = _mm_mul_ps(d, _mm_broadcast_ss(&xb.d));
    acc1 = _mm_fmadd_ps(s, _mm_cvtepi32_ps(isum), acc1);
    if constexpr (F::kMin) acc1 = _mm_fmadd_ps(m, _mm_broadcast_ss(&xb.s8[1]), acc1);
  }
}

// Block J of the four rows' super-blocks sbs (J known at compile time, F::block16); sd / sm: the
// super-block's scales, block j's four rows in sd[j].
template <class F, int MR, int J>
FASTLM_QTILE_TARGET FASTLM_INLINE void lanes_super_step(const XBlock* x, int64_t ldx,
                                                        const uint8_t* const* sbs,
                                                        const float (*sd)[4], const float (*sm)[4],
                                                        __m256* acc2, __m128& acc1) {
  __m256i lo[4], hi[4];
#pragma GCC unroll 4
  for (int c = 0; c < 4; ++c) F::template block16<J>(sbs[c], &lo[c], &hi[c]);
  lanes_step<F, MR>(x + J, ldx, lo, hi, _mm_load_ps(sd[J]), _mm_load_ps(sm[J]), acc2, acc1);
}
template <class F, int MR, int... J>
FASTLM_QTILE_TARGET FASTLM_INLINE void lanes_super(const XBlock* x, int64_t ldx,
                                                   const uint8_t* const* sbs, const float (*sd)[4],
                                                   const float (*sm)[4], __m256* acc2, __m128& acc1,
                                                   std::integer_sequence<int, J...>) {
  (lanes_super_step<F, MR, J>(x, ldx, sbs, sd, sm, acc2, acc1), ...);
}

// MR <= kMaxMR rows of x against `cols` weight rows (a multiple of 4), four weight rows a pass
// in the lanes of one register: each block's dot products are summed across lanes (sum4x8 /
// sum8x8), scaled and accumulated lane-wise. The four rows of a pass are adjacent or, spread >
// 1, four streams `spread` rows apart (as qtile's NR rows and qgemv_super). Super-block formats
// unpack the four rows' scales once per super-block and decode block J with F::block16<J>.
template <class F, int MR>
FASTLM_QTILE_TARGET void qlanes(const XBlock* x, int64_t ldx, const uint8_t* w, size_t row_bytes,
                                int64_t nb, const float* bias, float* y, int64_t ldy, int64_t cols,
                                int64_t spread) {
  const int64_t gap = spread > 1 ? spread : 1;
  const int64_t passes = spread > 1 ? spread : cols / 4;
  const int64_t ahead = (spread > 1 ? kStreamAhead : kAhead) * static_cast<int64_t>(row_bytes);
  // Each row's block `ahead` on; non-temporal for the decode GEMV (read once a step).
  const auto fetch = [&](const uint8_t* p) {
    if constexpr (MR == 1) {
      _mm_prefetch(reinterpret_cast<const char*>(p + ahead), _MM_HINT_NTA);
    } else {
      _mm_prefetch(reinterpret_cast<const char*>(p + ahead), _MM_HINT_T0);
    }
  };
  for (int64_t pass = 0; pass < passes; ++pass) {
    const int64_t c0 = spread > 1 ? pass : pass * 4;
    const uint8_t* rows[4];
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) rows[c] = w + (c0 + c * gap) * static_cast<int64_t>(row_bytes);
    __m256 acc2[MR / 2 > 0 ? MR / 2 : 1];
    __m128 acc1 = _mm_setzero_ps();
#pragma GCC unroll 2
    for (int i = 0; i < MR / 2; ++i) acc2[i] = _mm256_setzero_ps();
    if constexpr (kSuper<F>) {
      for (int64_t sb = 0; sb < nb / 8; ++sb) {
        const uint8_t* sbs[4];
        alignas(16) float sd[8][4], sm[8][4];
#pragma GCC unroll 4
        for (int c = 0; c < 4; ++c) {
          sbs[c] = rows[c] + sb * static_cast<int64_t>(F::kBytes);
          for (int64_t o = 0; o < static_cast<int64_t>(F::kBytes); o += 64) fetch(sbs[c] + o);
          alignas(32) float sup[16];
          F::super_scales(sbs[c], sup);
#pragma GCC unroll 8
          for (int j = 0; j < 8; ++j) {
            sd[j][c] = sup[F::dm_index(j, 0)];
            sm[j][c] = F::kMin ? sup[F::dm_index(j, 1)] : 0.0f;
          }
        }
        if constexpr (MR == 1) {
          // The decode GEMV: block J's offsets and shifts known at compile time.
          lanes_super<F, MR>(x + sb * 8, ldx, sbs, sd, sm, acc2, acc1,
                             std::make_integer_sequence<int, 8>{});
        } else {
          // (Unrolled over J with MR rows of x the tile spilled: 0.7-0.8x at M = 4.)
          for (int j = 0; j < 8; ++j) {
            __m256i lo[4], hi[4];
#pragma GCC unroll 4
            for (int c = 0; c < 4; ++c) F::values16(rows[c], sb * 8 + j, &lo[c], &hi[c]);
            lanes_step<F, MR>(x + sb * 8 + j, ldx, lo, hi, _mm_load_ps(sd[j]), _mm_load_ps(sm[j]),
                              acc2, acc1);
          }
        }
      }
    } else {
      for (int64_t b = 0; b < nb; ++b) {
#pragma GCC unroll 4
        for (int c = 0; c < 4; ++c) fetch(rows[c] + b * static_cast<int64_t>(F::kBytes));
        __m128 d, m;
        scales4rows<F>(rows, b, &d, &m);
        __m256i lo[4], hi[4];
#pragma GCC unroll 4
        for (int c = 0; c < 4; ++c) F::values16(rows[c], b, &lo[c], &hi[c]);
        lanes_step<F, MR>(x + b, ldx, lo, hi, d, m, acc2, acc1);
      }
    }
    alignas(32) float o[MR][4];
#pragma GCC unroll 2
    for (int i = 0; i < MR / 2; ++i) _mm256_store_ps(o[2 * i], acc2[i]);
    if constexpr (MR % 2 == 1) _mm_store_ps(o[MR - 1], acc1);
#pragma GCC unroll 4
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) {
        const int64_t col = c0 + c * gap;
        y[r * ldy + col] = o[r][c] + (bias ? bias[col] : 0.0f);
      }
  }
}

// qlanes one weight row at a time (any `cols`, adjacent rows): the same numbers, in scalars.
template <class F, int MR>
FASTLM_QTILE_TARGET void qlanes_one(const XBlock* x, int64_t ldx, const uint8_t* w,
                                    size_t row_bytes, int64_t nb, const float* bias, float* y,
                                    int64_t ldy, int64_t cols, int64_t) {
  for (int64_t c = 0; c < cols; ++c) {
    const uint8_t* row = w + c * static_cast<int64_t>(row_bytes);
    float acc[MR] = {};
    for (int64_t b = 0; b < nb; ++b) {
      const __m128 dm = scales4<F>(row, b);
      const float dw = _mm_cvtss_f32(dm), mw = _mm_cvtss_f32(_mm_movehdup_ps(dm));
      __m256i lo, hi;
      F::values16(row, b, &lo, &hi);
#pragma GCC unroll 4
      for (int r = 0; r < MR; ++r) {
        const XBlock& xb = x[r * ldx + b];
        const __m256i xlo = _mm256_load_si256(reinterpret_cast<const __m256i*>(xb.q));
        const __m256i xhi = _mm256_load_si256(reinterpret_cast<const __m256i*>(xb.q + 16));
        const int32_t isum = simd::hsum8_epi32(dot2(lo, xlo, hi, xhi));
        acc[r] = std::fma(dw * xb.d, static_cast<float>(isum), acc[r]);
        if constexpr (F::kMin) acc[r] = std::fma(mw, xb.s8[1], acc[r]);
      }
    }
#pragma GCC unroll 4
    for (int r = 0; r < MR; ++r) y[r * ldy + c] = acc[r] + (bias ? bias[c] : 0.0f);
  }
}

// Rows of x in lanes (XLanes: a block of eight rows as 16 pairs of int16 per row, then the rows'
// dx and sx): MG groups of eight rows against NR weight rows decoded as qfmt::Decoded (32 int16
// values, then {d, m}). Each pair of a weight row's values is broadcast to the eight rows' lanes,
// so a block's sums for eight rows accumulate in one register (vpmaddwd + vpaddd, or vpdpwssd)
// and meet their scales once per block: the same numbers as qlanes. Rows at or past `rows` (the
// padding of the last group) are not stored.
template <bool Min, int MG, int NR>
FASTLM_QTILE_TARGET void xtile(const XLanes* xl, int64_t ldg, const uint8_t* dec, size_t dec_row,
                               int64_t nb, const float* bias, float* y, int64_t ldy, int64_t cols,
                               int64_t rows) {
  constexpr int64_t kDec = 96;  // qfmt::Decoded<F>::kBytes
  for (int64_t c0 = 0; c0 + NR <= cols; c0 += NR) {
    __m256 acc[MG][NR];
    const uint8_t* wr[NR];
#pragma GCC unroll 8
    for (int c = 0; c < NR; ++c) {
      wr[c] = dec + (c0 + c) * static_cast<int64_t>(dec_row);
#pragma GCC unroll 2
      for (int g = 0; g < MG; ++g) acc[g][c] = _mm256_setzero_ps();
    }
    for (int64_t b = 0; b < nb; ++b) {
      const XLanes* xb[MG];
      __m256i is[MG][NR];
#pragma GCC unroll 2
      for (int g = 0; g < MG; ++g) {
        xb[g] = xl + g * ldg + b;
#pragma GCC unroll 8
        for (int c = 0; c < NR; ++c) is[g][c] = _mm256_setzero_si256();
      }
#pragma GCC unroll 16
      for (int p = 0; p < 16; ++p) {
        __m256i xv[MG];
#pragma GCC unroll 2
        for (int g = 0; g < MG; ++g)
          xv[g] = _mm256_load_si256(reinterpret_cast<const __m256i*>(xb[g]->q[p]));
#pragma GCC unroll 8
        for (int c = 0; c < NR; ++c) {
          int32_t pair;
          std::memcpy(&pair, wr[c] + b * kDec + 4 * p, 4);
          const __m256i wv = _mm256_set1_epi32(pair);
#pragma GCC unroll 2
          for (int g = 0; g < MG; ++g) {
            is[g][c] = dot_acc(is[g][c], wv, xv[g]);
            // Keeps each sum a chain in its register: reassociated, the products were all
            // computed first and spilled (1.5x slower).
            __asm__("" : "+x"(is[g][c]));
          }
        }
      }
#pragma GCC unroll 8
      for (int c = 0; c < NR; ++c) {
        const float* dm = reinterpret_cast<const float*>(wr[c] + b * kDec + 64);
        const __m256 dw = _mm256_broadcast_ss(dm), mw = _mm256_broadcast_ss(dm + 1);
#pragma GCC unroll 2
        for (int g = 0; g < MG; ++g) {
          const __m256 s = _mm256_mul_ps(dw, _mm256_load_ps(xb[g]->dx));
          acc[g][c] = _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(is[g][c]), acc[g][c]);
          if constexpr (Min) acc[g][c] = _mm256_fmadd_ps(mw, _mm256_load_ps(xb[g]->sx), acc[g][c]);
        }
      }
    }
#pragma GCC unroll 2
    for (int g = 0; g < MG; ++g)
#pragma GCC unroll 8
      for (int c = 0; c < NR; ++c) {
        alignas(32) float o[8];
        _mm256_store_ps(o, acc[g][c]);
        const int64_t col = c0 + c;
        const float bc = bias ? bias[col] : 0.0f;
        for (int r = 0; r < 8 && g * 8 + r < rows; ++r) y[(g * 8 + r) * ldy + col] = o[r] + bc;
      }
  }
}
