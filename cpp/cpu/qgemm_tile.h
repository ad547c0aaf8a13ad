// The register tile of the quantized GEMM (qgemm_cpu.cc), written once for AVX2 and AVX-512
// VNNI. No include guard on purpose: qgemm_cpu.cc includes it once per ISA inside a namespace
// that defines FASTLM_QTILE_TARGET (the target attribute) and `dot(w, x)` (the 8 int32 lanes
// w[2l] * x[2l] + w[2l+1] * x[2l+1] of 16 int16 pairs). The arithmetic per output element is the
// one cpu/qgemm_cpu.h documents, whatever MR and NR are.
//
// A tile computes y for MR rows of x against `cols` weight rows, NR weight rows at a time: the
// MR x NR accumulators stay in registers, each decoded weight block is reused MR times and each
// activation block NR times.
template <class F, int MR, int NR>
FASTLM_QTILE_TARGET void qtile(const XBlock* x, int64_t ldx, const uint8_t* w, size_t row_bytes,
                               int64_t nb, const float* bias, float* y, int64_t ldy, int64_t cols) {
  for (int64_t c0 = 0; c0 < cols; c0 += NR) {
    static_assert(MR * NR <= 8, "the min terms of a tile share one register");
    __m256 acc[MR][NR];
    // Lane r * NR + c accumulates fma(mw_c, sx_r) for (row r, column c): one register for
    // the whole tile, not one per output (those spilled to the stack in the 4 x 2 tile).
    __m256 summ = _mm256_setzero_ps();
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
      for (int c = 0; c < NR; ++c) acc[r][c] = _mm256_setzero_ps();
    const uint8_t* rows = w + c0 * row_bytes;
    for (int64_t b = 0; b < nb; ++b) {
      __m256i lo[NR], hi[NR];
      __m128 dm[NR];
#pragma GCC unroll 8
      for (int c = 0; c < NR; ++c) {
        const uint8_t* row = rows + c * row_bytes;
        // The same block of the row kAhead rows on (a later tile), while this one computes.
        _mm_prefetch(
            reinterpret_cast<const char*>(row + kAhead * row_bytes + b * F::kBytes / F::kPer),
            _MM_HINT_T0);
        dm[c] = scales4<F>(row, b);
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
        // mw of each lane's column times sx of its row (dm[c] = {dw, mw, ..}, s4 = {0, sx, ..}),
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
        const auto sx = [&](int r) { return r < MR ? x[r * ldx + b].s4[1] : 0.0f; };
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
        y[r * ldy + c0 + c] = simd::hsum8(acc[r][c]) + (F::kMin ? sm[r * NR + c] : 0.0f) +
                              (bias ? bias[c0 + c] : 0.0f);
      }
  }
}
