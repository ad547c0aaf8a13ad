// The tiles of the quantized GEMM (qgemm_cpu.cc), written once for AVX2 and AVX-512 VNNI. No
// include guard on purpose: qgemm_cpu.cc includes it once per ISA inside a namespace that defines
// FASTLM_QTILE_TARGET (the target attribute), `dot(w, x)` (the 8 int32 lanes
// w[2l] * x[2l] + w[2l+1] * x[2l+1] of 16 int16 pairs), dot2 (two such, added) and dot_acc
// (dot added to an accumulator). The arithmetic per output element is the one cpu/qgemm_cpu.h
// documents, whichever tile runs: qlanes (weight rows in lanes, M <= kMaxMR and the rest rows),
// qlanes_one (its one-row remainder) or xtile (rows of x in lanes, M >= 8).
// Formats whose scales unpack a super-block at a time (F::super_scales, F::dm_index).
template <class F>
inline constexpr bool kSuper = requires(const uint8_t* sb, float* d) { F::super_scales(sb, d); };

// Block b's {d, m, 0, 0} (scales4's layout) from its super-block's F::super_scales.
template <class F>
FASTLM_INLINE __m128 super_dm(const float* sup, int64_t b) {
  const int j = static_cast<int>(b % 8);
  return _mm_setr_ps(sup[F::dm_index(j, 0)], sup[F::dm_index(j, 1)], 0.0f, 0.0f);
}

// Block b's scales of four weight rows of a 32-block format: lane c of d and m for rows[c] (the
// super-block formats unpack theirs per super-block in qlanes).
template <class F>
FASTLM_QTILE_TARGET FASTLM_INLINE void scales4rows(const uint8_t* const* rows, int64_t b, __m128* d,
                                                   __m128* m) {
  static_assert(F::kPer == 1, "32-block formats only");
  // f16 d heads each block (then f16 m where it is stored; other bytes of the block where not,
  // never read as m: no minimum term then): one conversion, the even and the odd lanes.
  int32_t u[4];
#pragma GCC unroll 4
  for (int c = 0; c < 4; ++c) std::memcpy(&u[c], rows[c] + b * F::kBytes, 4);
  const __m256 a = _mm256_cvtph_ps(_mm_setr_epi32(u[0], u[1], u[2], u[3]));
  const __m128 lo = _mm256_castps256_ps128(a), hi = _mm256_extractf128_ps(a, 1);
  *d = _mm_shuffle_ps(lo, hi, 0x88);
  *m = _mm_shuffle_ps(lo, hi, 0xdd);
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
    __m256i p[8], q[8];  // q: Half's elements 16..31
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const XBlock& xb = h ? x1 : x0;
      const __m256i xlo = _mm256_load_si256(reinterpret_cast<const __m256i*>(xb.q));
      const __m256i xhi = _mm256_load_si256(reinterpret_cast<const __m256i*>(xb.q + 16));
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) {
        if constexpr (F::kHalfScales) {
          p[4 * h + c] = dot(lo[c], xlo);
          q[4 * h + c] = dot(hi[c], xhi);
        } else {
          p[4 * h + c] = dot2(lo[c], xlo, hi[c], xhi);
        }
      }
    }
    const __m256 dx = _mm256_set_m128(_mm_broadcast_ss(&x1.d), _mm_broadcast_ss(&x0.d));
    const __m256 s = _mm256_mul_ps(_mm256_set_m128(d, d), dx);
    acc2[i] = _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(sum8x8(p)), acc2[i]);
    if constexpr (F::kHalfScales) {
      const __m256 s1 = _mm256_mul_ps(_mm256_set_m128(m, m), dx);
      acc2[i] = _mm256_fmadd_ps(s1, _mm256_cvtepi32_ps(sum8x8(q)), acc2[i]);
    }
    if constexpr (F::kMin) {
      const __m256 sx = _mm256_set_m128(_mm_broadcast_ss(&x1.s), _mm_broadcast_ss(&x0.s));
      acc2[i] = _mm256_fmadd_ps(_mm256_set_m128(m, m), sx, acc2[i]);
    }
  }
  if constexpr (MR % 2 == 1) {
    const XBlock& xb = x[(MR - 1) * ldx];
    const __m256i xlo = _mm256_load_si256(reinterpret_cast<const __m256i*>(xb.q));
    const __m256i xhi = _mm256_load_si256(reinterpret_cast<const __m256i*>(xb.q + 16));
    const __m128 dx = _mm_broadcast_ss(&xb.d);
    if constexpr (F::kHalfScales) {
      const __m128i ilo =
          sum4x8(dot(lo[0], xlo), dot(lo[1], xlo), dot(lo[2], xlo), dot(lo[3], xlo));
      const __m128i ihi =
          sum4x8(dot(hi[0], xhi), dot(hi[1], xhi), dot(hi[2], xhi), dot(hi[3], xhi));
      acc1 = _mm_fmadd_ps(_mm_mul_ps(d, dx), _mm_cvtepi32_ps(ilo), acc1);
      acc1 = _mm_fmadd_ps(_mm_mul_ps(m, dx), _mm_cvtepi32_ps(ihi), acc1);
    } else {
      const __m128i isum = sum4x8(dot2(lo[0], xlo, hi[0], xhi), dot2(lo[1], xlo, hi[1], xhi),
                                  dot2(lo[2], xlo, hi[2], xhi), dot2(lo[3], xlo, hi[3], xhi));
      acc1 = _mm_fmadd_ps(_mm_mul_ps(d, dx), _mm_cvtepi32_ps(isum), acc1);
    }
    if constexpr (F::kMin) acc1 = _mm_fmadd_ps(m, _mm_broadcast_ss(&xb.s), acc1);
  }
}

// Four rows' 8 values (r[c], lane j for block j) -> out[j % 4][4 * (j / 4) + c]: block j's four
// rows are the 16 bytes at &out[j % 4][4 * (j / 4)].
FASTLM_QTILE_TARGET FASTLM_INLINE void transpose4x8(const __m256* r, float (*out)[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  _mm256_store_ps(out[0], _mm256_shuffle_ps(t0, t2, 0x44));  // blocks 0 | 4
  _mm256_store_ps(out[1], _mm256_shuffle_ps(t0, t2, 0xee));  // blocks 1 | 5
  _mm256_store_ps(out[2], _mm256_shuffle_ps(t1, t3, 0x44));  // blocks 2 | 6
  _mm256_store_ps(out[3], _mm256_shuffle_ps(t1, t3, 0xee));  // blocks 3 | 7
}

// Block J of the four rows' super-blocks sbs (J known at compile time, F::block16); sd / sm: the
// super-block's scales as transpose4x8 lays them out.
template <class F, int MR, int J>
FASTLM_QTILE_TARGET FASTLM_INLINE void lanes_super_step(const XBlock* x, int64_t ldx,
                                                        const uint8_t* const* sbs,
                                                        const float (*sd)[8], const float (*sm)[8],
                                                        __m256* acc2, __m128& acc1) {
  __m256i lo[4], hi[4];
#pragma GCC unroll 4
  for (int c = 0; c < 4; ++c) F::template block16<J>(sbs[c], &lo[c], &hi[c]);
  lanes_step<F, MR>(x + J, ldx, lo, hi, _mm_load_ps(&sd[J % 4][4 * (J / 4)]),
                    _mm_load_ps(&sm[J % 4][4 * (J / 4)]), acc2, acc1);
}
template <class F, int MR, int... J>
FASTLM_QTILE_TARGET FASTLM_INLINE void lanes_super(const XBlock* x, int64_t ldx,
                                                   const uint8_t* const* sbs, const float (*sd)[8],
                                                   const float (*sm)[8], __m256* acc2, __m128& acc1,
                                                   std::integer_sequence<int, J...>) {
  (lanes_super_step<F, MR, J>(x, ldx, sbs, sd, sm, acc2, acc1), ...);
}

// MR <= kMaxMR rows of x against `cols` weight rows (a multiple of 4), four weight rows a pass
// in the lanes of one register: each block's dot products are summed across lanes (sum4x8 /
// sum8x8), scaled and accumulated lane-wise. The four rows of a pass are adjacent or, spread >
// 1, four streams `spread` rows apart (QTileFn's spread). Super-block formats
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
        alignas(32) float sd[4][8], sm[4][8];
        __m256 dr[4], mr[4];
#pragma GCC unroll 4
        for (int c = 0; c < 4; ++c) {
          sbs[c] = rows[c] + sb * static_cast<int64_t>(F::kBytes);
          for (int64_t o = 0; o < static_cast<int64_t>(F::kBytes); o += 64) fetch(sbs[c] + o);
          alignas(32) float sup[16];
          F::super_scales(sbs[c], sup);
          const __m256 a = _mm256_load_ps(sup), e = _mm256_load_ps(sup + 8);
          if constexpr (F::dm_index(1, 0) == 1) {
            dr[c] = a;  // {d of blocks 0..7, m of blocks 0..7}
            mr[c] = e;
          } else {
            // {d0, m0, d1, m1, ...}: the even and the odd lanes, 64-bit pairs put back in order.
            dr[c] = _mm256_castpd_ps(
                _mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, e, 0x88)), 0xd8));
            mr[c] = _mm256_castpd_ps(
                _mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, e, 0xdd)), 0xd8));
          }
          if constexpr (!F::kMin && !F::kHalfScales) mr[c] = _mm256_setzero_ps();
        }
        transpose4x8(dr, sd);
        transpose4x8(mr, sm);
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
            lanes_step<F, MR>(x + sb * 8 + j, ldx, lo, hi, _mm_load_ps(&sd[j % 4][4 * (j / 4)]),
                              _mm_load_ps(&sm[j % 4][4 * (j / 4)]), acc2, acc1);
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
        if constexpr (F::kHalfScales) {
          acc[r] = std::fma(dw * xb.d, static_cast<float>(simd::hsum8_epi32(dot(lo, xlo))), acc[r]);
          acc[r] = std::fma(mw * xb.d, static_cast<float>(simd::hsum8_epi32(dot(hi, xhi))), acc[r]);
        } else {
          const int32_t isum = simd::hsum8_epi32(dot2(lo, xlo, hi, xhi));
          acc[r] = std::fma(dw * xb.d, static_cast<float>(isum), acc[r]);
        }
        if constexpr (F::kMin) acc[r] = std::fma(mw, xb.s, acc[r]);
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
template <bool Min, bool Half, int MG, int NR>
FASTLM_QTILE_TARGET void xtile(const XLanes* xl, int64_t ldg, const uint8_t* dec, size_t dec_row,
                               int64_t nb, const float* bias, float* y, int64_t ldy, int64_t cols,
                               int64_t rows) {
  static_assert(!(Min && Half), "scale() adds the minimum once per call");
  constexpr int64_t kDec = 96;  // qfmt::Decoded<F>::kBytes
  for (int64_t c0 = 0; c0 + NR <= cols; c0 += NR) {
    __m256 acc[MG][NR];
    const uint8_t* wr[NR];
    const XLanes* xb[MG];
    // The sums `is` times scale `which` of block b ({d, m}[which] * dx) into acc (and the
    // minimum term where the block has one); `is` starts again from zero.
    const auto scale = [&](int64_t b, int which, __m256i(&is)[MG][NR]) {
#pragma GCC unroll 8
      for (int c = 0; c < NR; ++c) {
        const float* dm = reinterpret_cast<const float*>(wr[c] + b * kDec + 64);
        const __m256 dw = _mm256_broadcast_ss(dm + which);
#pragma GCC unroll 2
        for (int g = 0; g < MG; ++g) {
          const __m256 s = _mm256_mul_ps(dw, _mm256_load_ps(xb[g]->dx));
          acc[g][c] = _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(is[g][c]), acc[g][c]);
          if constexpr (Min)
            acc[g][c] =
                _mm256_fmadd_ps(_mm256_broadcast_ss(dm + 1), _mm256_load_ps(xb[g]->sx), acc[g][c]);
          is[g][c] = _mm256_setzero_si256();
        }
      }
    };
#pragma GCC unroll 8
    for (int c = 0; c < NR; ++c) {
      wr[c] = dec + (c0 + c) * static_cast<int64_t>(dec_row);
#pragma GCC unroll 2
      for (int g = 0; g < MG; ++g) acc[g][c] = _mm256_setzero_ps();
    }
    __m256i is[MG][NR];  // the block's sums: zero here, then again after each scale()
#pragma GCC unroll 2
    for (int g = 0; g < MG; ++g)
#pragma GCC unroll 8
      for (int c = 0; c < NR; ++c) is[g][c] = _mm256_setzero_si256();
    for (int64_t b = 0; b < nb; ++b) {
#pragma GCC unroll 2
      for (int g = 0; g < MG; ++g) xb[g] = xl + g * ldg + b;
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
        // Half: elements 0..15 (pairs 0..7) have the scale {d, m}[0], 16..31 the second.
        if (Half && p == 7) scale(b, 0, is);
      }
      scale(b, Half ? 1 : 0, is);
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
