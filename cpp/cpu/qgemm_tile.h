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
    __m256 acc[MR][NR];
    __m128 summ[MR][NR];  // lane 1 accumulates mw * sx (lane 0 adds dw * 0)
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
      for (int c = 0; c < NR; ++c) {
        acc[r][c] = _mm256_setzero_ps();
        summ[r][c] = _mm_setzero_ps();
      }
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
          if constexpr (F::kMin) summ[r][c] = _mm_fmadd_ps(dm[c], _mm_loadu_ps(xb.s4), summ[r][c]);
        }
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
      for (int c = 0; c < NR; ++c) {
        const float sm = F::kMin ? _mm_cvtss_f32(_mm_movehdup_ps(summ[r][c])) : 0.0f;
        y[r * ldy + c0 + c] = simd::hsum8(acc[r][c]) + sm + (bias ? bias[c0 + c] : 0.0f);
      }
  }
}
