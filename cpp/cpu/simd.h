#pragma once
// x86 intrinsics and the per-function target attributes of the AVX-512 bodies. The baseline
// flags already enable AVX2/FMA/F16C; nothing here exists on other architectures.
#if defined(__x86_64__)
#include <immintrin.h>

#define FASTLM_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define FASTLM_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define FASTLM_INLINE inline __attribute__((always_inline))

namespace fastlm::cpu::simd {

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The four horizontal sums of a..d, in order.
FASTLM_INLINE __m128 hsum8x4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 ab = _mm256_hadd_ps(a, b);
  const __m256 cd = _mm256_hadd_ps(c, d);
  const __m256 abcd = _mm256_hadd_ps(ab, cd);
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

// 512 -> 256 bits by adding the halves.
FASTLM_AVX512 FASTLM_INLINE __m256 fold16(__m512 v) {
  return _mm256_add_ps(_mm512_castps512_ps256(v),
                       _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

}  // namespace fastlm::cpu::simd
#endif
