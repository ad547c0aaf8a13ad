#include "cpu/rms_norm_cpu.h"

#include <cmath>

#include "cpu/cpu_common.h"

namespace fastlm::cpu {

namespace {

// Sum of squares with 16 independent partial sums, which the compiler keeps in vector
// registers (a single accumulator would serialize on the add latency and not vectorize).
inline float sum_squares(const float* x, int64_t n) {
  float part[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) part[j] += x[i + j] * x[i + j];
  float s = 0.0f;
  for (; i < n; ++i) s += x[i] * x[i];
  for (float p : part) s += p;
  return s;
}

template <DType W>
inline void scale_row(const float* x, const void* w, float inv, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * inv * load_f32<W>(w, i);
}

}  // namespace

template <DType W>
void rms_norm(const float* x, const void* w, float eps, float* y, int64_t m, int64_t h) {
  parallel_for(m, m * h >= kParallelMinElems, [&](int64_t r) {
    const float* xr = x + r * h;
    const float inv = 1.0f / std::sqrt(sum_squares(xr, h) / static_cast<float>(h) + eps);
    scale_row<W>(xr, w, inv, y + r * h, h);
  });
}

template <DType W>
void add_rms_norm(float* residual, const float* x, const void* w, float eps, float* y, int64_t m,
                  int64_t h) {
  parallel_for(m, m * h >= kParallelMinElems, [&](int64_t r) {
    float* res = residual + r * h;
    const float* xr = x + r * h;
    for (int64_t i = 0; i < h; ++i) res[i] += xr[i];
    // The row is still in L1 for the second and third passes.
    const float inv = 1.0f / std::sqrt(sum_squares(res, h) / static_cast<float>(h) + eps);
    scale_row<W>(res, w, inv, y + r * h, h);
  });
}

template <DType W>
void head_rms_norm(float* x, const void* w, int64_t count, int64_t head_dim, float eps) {
  parallel_for(count, count * head_dim >= kParallelMinElems, [&](int64_t c) {
    float* xc = x + c * head_dim;
    const float inv =
        1.0f / std::sqrt(sum_squares(xc, head_dim) / static_cast<float>(head_dim) + eps);
    scale_row<W>(xc, w, inv, xc, head_dim);
  });
}

#define FASTLM_INSTANTIATE(W)                                                              \
  template void rms_norm<W>(const float*, const void*, float, float*, int64_t, int64_t);   \
  template void add_rms_norm<W>(float*, const float*, const void*, float, float*, int64_t, \
                                int64_t);                                                  \
  template void head_rms_norm<W>(float*, const void*, int64_t, int64_t, float);
FASTLM_INSTANTIATE(DType::kF32)
FASTLM_INSTANTIATE(DType::kBF16)
FASTLM_INSTANTIATE(DType::kF16)
#undef FASTLM_INSTANTIATE

}  // namespace fastlm::cpu
