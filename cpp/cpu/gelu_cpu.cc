#include "cpu/gelu_cpu.h"

#include <cmath>

#include "cpu/cpu_common.h"

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

}  // namespace

void gelu(float* x, int64_t n, bool tanh_approximation) {
  constexpr int64_t kChunk = 4096;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  if (tanh_approximation) {
    const float k = std::sqrt(2.0f / static_cast<float>(M_PI));
#pragma omp parallel for schedule(static) if (n >= kParallelMinElems)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t end = std::min(n, (c + 1) * kChunk);
      for (int64_t i = c * kChunk; i < end; ++i) {
        const float v = x[i];
        x[i] = 0.5f * v * (1.0f + tanh_approx(k * (v + 0.044715f * v * v * v)));
      }
    }
    return;
  }
  const float inv_sqrt2 = 0.70710678118654752f;
#pragma omp parallel for schedule(static) if (n >= kParallelMinElems)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t end = std::min(n, (c + 1) * kChunk);
    for (int64_t i = c * kChunk; i < end; ++i) {
      const float v = x[i];
      x[i] = 0.5f * v * (1.0f + erf_approx(v * inv_sqrt2));
    }
  }
}

}  // namespace fastlm::cpu
