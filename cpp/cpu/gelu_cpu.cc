#include "cpu/gelu_cpu.h"

#include <cmath>

#include "cpu/cpu_common.h"
#include "cpu/isa.h"
#include "cpu/simd.h"

#if defined(__x86_64__)
// GCC 12's AVX-512 headers use _mm512_undefined_*() operands that trip this warning.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace fastlm::cpu {

namespace {

// erf by Abramowitz & Stegun 7.1.26 (absolute error <= 1.5e-7), branch-free so the loop
// vectorizes: std::erf does not, and the MLP applies GELU to T x intermediate_size values.
inline float erf_approx(float x) {
  const float ax = std::fabs(x);
  const float t = 1.0f / (1.0f + 0.3275911f * ax);
  float p = 1.061405429f;
  p = p * t - 1.453152027f;
  p = p * t + 1.421413741f;
  p = p * t - 0.284496736f;
  p = p * t + 0.254829592f;
  const float r = 1.0f - p * t * fast_exp(-ax * ax);
  return std::copysign(r, x);
}

// tanh(y) = 1 - 2 / (exp(2y) + 1); fast_exp clamps, so large |y| saturates to +-1.
inline float tanh_approx(float y) { return 1.0f - 2.0f / (fast_exp(2.0f * y) + 1.0f); }

// Exact (erf) GELU over n values in place; the same A&S erf as erf_approx in every path.
using ErfGeluFn = void (*)(float* x, int64_t n);

void erf_gelu_scalar(float* x, int64_t n) {
  const float inv_sqrt2 = 0.70710678118654752f;
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    x[i] = 0.5f * v * (1.0f + erf_approx(v * inv_sqrt2));
  }
}

#if defined(__x86_64__)

void erf_gelu_avx2(float* x, int64_t n) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 half = _mm256_set1_ps(0.5f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256 z = _mm256_mul_ps(v, _mm256_set1_ps(0.70710678118654752f));
    const __m256 az = _mm256_andnot_ps(sign, z);
    const __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(0.3275911f), az, one));
    __m256 p = _mm256_set1_ps(1.061405429f);
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.453152027f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.421413741f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.284496736f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.254829592f));
    const __m256 e = simd::exp8(_mm256_mul_ps(_mm256_xor_ps(az, sign), az));
    const __m256 r = _mm256_fnmadd_ps(_mm256_mul_ps(p, t), e, one);  // erf(|z|)
    const __m256 erf = _mm256_or_ps(r, _mm256_and_ps(sign, z));      // copysign
    _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_add_ps(one, erf)));
  }
  if (i < n) {
    // The tail through the same vector formula (padded), so a value's GELU does not depend on
    // where it sits in the array (the array of a batch is rows x columns).
    float pad[8] = {};
    std::copy(x + i, x + n, pad);
    erf_gelu_avx2(pad, 8);
    std::copy(pad, pad + (n - i), x + i);
  }
}

FASTLM_AVX512 void erf_gelu_avx512(float* x, int64_t n) {
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 half = _mm512_set1_ps(0.5f);
  const __m512i sign = _mm512_set1_epi32(static_cast<int>(0x80000000u));
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 k = n - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1);
    const __m512 v = _mm512_maskz_loadu_ps(k, x + i);
    const __m512 z = _mm512_mul_ps(v, _mm512_set1_ps(0.70710678118654752f));
    const __m512 az = _mm512_abs_ps(z);
    const __m512 t = _mm512_div_ps(one, _mm512_fmadd_ps(_mm512_set1_ps(0.3275911f), az, one));
    __m512 p = _mm512_set1_ps(1.061405429f);
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453152027f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592f));
    const __m512 e = simd::exp16(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), az), az));
    const __m512 r = _mm512_fnmadd_ps(_mm512_mul_ps(p, t), e, one);  // erf(|z|)
    const __m512i zs = _mm512_and_si512(_mm512_castps_si512(z), sign);
    const __m512 erf = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(r), zs));
    _mm512_mask_storeu_ps(x + i, k, _mm512_mul_ps(_mm512_mul_ps(half, v), _mm512_add_ps(one, erf)));
  }
}

#endif  // __x86_64__

ErfGeluFn pick_erf_gelu() {
  switch (active_isa()) {
    case Isa::kAvx512Bf16:
    case Isa::kAvx512:
#if defined(__x86_64__)
      return erf_gelu_avx512;
#endif
      [[fallthrough]];
    case Isa::kAvx2:
#if defined(__x86_64__)
      return erf_gelu_avx2;
#endif
      [[fallthrough]];
    case Isa::kScalar:
      return erf_gelu_scalar;
  }
  return erf_gelu_scalar;
}

}  // namespace

void gelu(float* x, int64_t n, bool tanh_approximation) {
  constexpr int64_t kChunk = 4096;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  if (tanh_approximation) {
    const float k = std::sqrt(2.0f / static_cast<float>(M_PI));
    parallel_for(chunks, n >= kParallelMinElems, [&](int64_t c) {
      const int64_t end = std::min(n, (c + 1) * kChunk);
      for (int64_t i = c * kChunk; i < end; ++i) {
        const float v = x[i];
        x[i] = 0.5f * v * (1.0f + tanh_approx(k * (v + 0.044715f * v * v * v)));
      }
    });
    return;
  }
  const ErfGeluFn fn = pick_erf_gelu();
  parallel_for(chunks, n >= kParallelMinElems, [&](int64_t c) {
    const int64_t begin = c * kChunk;
    fn(x + begin, std::min(n, begin + kChunk) - begin);
  });
}

}  // namespace fastlm::cpu
