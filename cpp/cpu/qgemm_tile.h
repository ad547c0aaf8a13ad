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

// The decode GEMV (one row of x) of the 32-block formats (Q4_0 .. Q8_0): the same arithmetic as
// qtile<F, 1, 4>, with fewer instructions per block. The four weight rows' {dw, mw} pairs are
// converted by one vcvtph2ps, their products with dx by one multiply and their minimum terms by
// one fma (lane 2c + 1 of `summ` is row c's summ); accumulators and x stay in registers, and the
// rows `ahead` on are prefetched non-temporal: each weight byte is read once per step, so the
// stream should not evict L2's activations, norms and KV rows (measured -0.5-1% per GEMV against
// T0, steps alternating in one process; kAhead 12 or 16: +2-5%). With spread > 1 (qgemm_cpu.cc's
// QTileFn) the four rows are four streams, each prefetched kStreamAhead rows on.
template <class F>
FASTLM_QTILE_TARGET FASTLM_INLINE void gemv_step(const uint8_t* row, int64_t b, __m256i xlo,
                                                 __m256i xhi, __m256 scale, __m256& acc) {
  __m256i lo, hi;
  F::values16(row, b, &lo, &hi);
  acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(dot2(lo, xlo, hi, xhi)), acc);
}

template <class F>
FASTLM_QTILE_TARGET void qgemv(const XBlock* x, int64_t, const uint8_t* w, size_t row_bytes,
                               int64_t nb, const float* bias, float* y, int64_t, int64_t cols,
                               int64_t spread) {
  static_assert(F::kPer == 1 && !F::kHalfScales, "32-block formats only");
  const GemvPasses g(row_bytes, cols, spread);
  const int64_t gap = g.gap, stride = g.stride, ahead = g.ahead;
  for (int64_t pass = 0; pass < g.passes; ++pass) {
    const int64_t c0 = g.first_row(pass);
    const uint8_t* r0 = w + c0 * row_bytes;
    const uint8_t* r1 = r0 + stride;
    const uint8_t* r2 = r1 + stride;
    const uint8_t* r3 = r2 + stride;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0, summ = acc0;
    for (int64_t b = 0; b < nb; ++b) {
      const size_t off = static_cast<size_t>(b) * F::kBytes;
      // Each row's block `ahead` on (a later pass of its stream).
      const char* p = reinterpret_cast<const char*>(r0 + ahead + off);
      _mm_prefetch(p, _MM_HINT_NTA);
      _mm_prefetch(p + stride, _MM_HINT_NTA);
      _mm_prefetch(p + 2 * stride, _MM_HINT_NTA);
      _mm_prefetch(p + 3 * stride, _MM_HINT_NTA);
      uint32_t p0, p1, p2, p3;
      std::memcpy(&p0, r0 + off, 4);
      std::memcpy(&p1, r1 + off, 4);
      std::memcpy(&p2, r2 + off, 4);
      std::memcpy(&p3, r3 + off, 4);
      const __m128i h = _mm_setr_epi32(static_cast<int>(p0), static_cast<int>(p1),
                                       static_cast<int>(p2), static_cast<int>(p3));
      // {d0, m0, d1, m1, d2, m2, d3, m3}; only d stored (signed formats, no minimum): each d
      // twice, the bytes after it dropped.
      const __m256 dm = F::kStoredMin ? _mm256_cvtph_ps(h) : _mm256_moveldup_ps(_mm256_cvtph_ps(h));
      const XBlock& xb = x[b];
      const __m256 sc = _mm256_mul_ps(dm, _mm256_broadcast_ss(&xb.d));  // lane 2c: dw_c * dx
      if constexpr (F::kMin) summ = _mm256_fmadd_ps(dm, _mm256_load_ps(xb.s8), summ);
      const __m256 s02 = _mm256_permute_ps(sc, 0x00);  // {s0 x4 | s2 x4}
      const __m256 s13 = _mm256_permute_ps(sc, 0xaa);  // {s1 x4 | s3 x4}
      const __m256i xlo = _mm256_load_si256(reinterpret_cast<const __m256i*>(xb.q));
      const __m256i xhi = _mm256_load_si256(reinterpret_cast<const __m256i*>(xb.q + 16));
      gemv_step<F>(r0, b, xlo, xhi, _mm256_permute2f128_ps(s02, s02, 0x00), acc0);
      gemv_step<F>(r1, b, xlo, xhi, _mm256_permute2f128_ps(s13, s13, 0x00), acc1);
      gemv_step<F>(r2, b, xlo, xhi, _mm256_permute2f128_ps(s02, s02, 0x11), acc2);
      gemv_step<F>(r3, b, xlo, xhi, _mm256_permute2f128_ps(s13, s13, 0x11), acc3);
    }
    alignas(32) float sm[8];
    _mm256_store_ps(sm, summ);
    const __m256 accs[4] = {acc0, acc1, acc2, acc3};
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
      const float m = F::kMin ? sm[2 * c + 1] : 0.0f;
      const int64_t o = c0 + c * gap;
      y[o] = simd::hsum8(accs[c]) + m + (bias ? bias[o] : 0.0f);
    }
  }
}

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

// The decode GEMV of the K-quant formats (Q4_K, Q5_K, Q6_K: super-blocks of 8 32-blocks): the
// same arithmetic as qtile<F, 1, 4>, but each row's scales are unpacked once per super-block
// (F::super_scales: the 32-blocks' dw = d * sc, and mw) instead of once per 32-block, and the
// minimum terms of the four rows run in the lanes of one register (lane c is row c's summ, the
// same fma chain over the blocks). Rows as in qgemv: adjacent, or four streams (spread).
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

// The one-row tile of F: the GEMVs above, the generic tile for any other format.
template <class F>
constexpr QTileFn decode_tile() {
  if constexpr (F::kPer == 1) {
    return &qgemv<F>;
  } else if constexpr (kSuper<F>) {
    return &qgemv_super<F>;
  } else {
    return &qtile<F, 1, 4>;
  }
}
