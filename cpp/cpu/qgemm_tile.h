// The register tile of the quantized GEMM (qgemm_cpu.cc), written once for AVX2 and AVX-512
// VNNI. No include guard on purpose: qgemm_cpu.cc includes it once per ISA inside a namespace
// that defines FASTLM_QTILE_TARGET (the target attribute) and `dot(u, s)` (the 8 int32 lane sums
// of unsigned u x signed s byte products, 4 adjacent bytes per lane). The arithmetic per output
// element is the one cpu/qgemm_cpu.h documents, whatever MR and NR are.
//
// A tile computes y for MR rows of x against `cols` weight rows, NR weight rows at a time: the
// MR x NR accumulators stay in registers, each decoded weight block is reused MR times and each
// activation block NR times.
template <class F, int MR, int NR>
FASTLM_QTILE_TARGET void qtile(const XBlock* x, int64_t ldx, const uint8_t* w, size_t row_bytes,
                               int64_t nb, const float* bias, float* y, int64_t ldy, int64_t cols) {
  for (int64_t c0 = 0; c0 < cols; c0 += NR) {
    __m256 acc[MR][NR];
    float summ[MR][NR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
      for (int c = 0; c < NR; ++c) {
        acc[r][c] = _mm256_setzero_ps();
        summ[r][c] = 0.0f;
      }
    for (int64_t b = 0; b < nb; ++b) {
      __m256i q[NR];
      float dw[NR], mw[NR];
#pragma GCC unroll 8
      for (int c = 0; c < NR; ++c) {
        const uint8_t* row = w + (c0 + c) * row_bytes;
        F::scales(row, b, &dw[c], &mw[c]);
        q[c] = F::values(row, b);
      }
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const XBlock& xb = x[r * ldx + b];
        const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.q));
        const __m256 dx = _mm256_loadu_ps(xb.dx);
#pragma GCC unroll 8
        for (int c = 0; c < NR; ++c) {
          __m256i p;
          if constexpr (F::kSigned) {
            p = dot(_mm256_abs_epi8(q[c]), _mm256_sign_epi8(xq, q[c]));
          } else {
            p = dot(q[c], xq);
          }
          // Q6_K scales int32 lanes 0..3 (elements 0..15) and 4..7 (16..31) apart.
          const __m256 w_scale = F::kHalfScales
                                     ? _mm256_set_m128(_mm_set1_ps(mw[c]), _mm_set1_ps(dw[c]))
                                     : _mm256_set1_ps(dw[c]);
          const __m256 scale = _mm256_mul_ps(w_scale, dx);
          acc[r][c] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), acc[r][c]);
          if constexpr (F::kMin) summ[r][c] = std::fma(mw[c], xb.s, summ[r][c]);
        }
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
      for (int c = 0; c < NR; ++c)
        y[r * ldy + c0 + c] = simd::hsum8(acc[r][c]) + summ[r][c] + (bias ? bias[c0 + c] : 0.0f);
  }
}
