#include "cpu/layer_norm_cpu.h"

#include <cmath>

#include "cpu/cpu_common.h"

namespace fastlm::cpu {

namespace {

// Two-pass mean / variance (as torch computes it: no E[x^2] - E[x]^2 cancellation), with 16
// partial sums so the loops vectorize.
inline void normalize_row(const float* x, const void* w, const void* b, float eps, float* y,
                          int64_t h, auto load) {
  float part[16] = {};
  int64_t i = 0;
  for (; i + 16 <= h; i += 16)
    for (int j = 0; j < 16; ++j) part[j] += x[i + j];
  float s = 0.0f;
  for (; i < h; ++i) s += x[i];
  for (float p : part) s += p;
  const float mean = s / static_cast<float>(h);
  float vpart[16] = {};
  i = 0;
  for (; i + 16 <= h; i += 16)
    for (int j = 0; j < 16; ++j) {
      const float d = x[i + j] - mean;
      vpart[j] += d * d;
    }
  float v = 0.0f;
  for (; i < h; ++i) v += (x[i] - mean) * (x[i] - mean);
  for (float p : vpart) v += p;
  const float inv = 1.0f / std::sqrt(v / static_cast<float>(h) + eps);
  for (i = 0; i < h; ++i) y[i] = (x[i] - mean) * inv * load(w, i) + load(b, i);
}

}  // namespace

template <DType W>
void layer_norm(const float* x, const void* w, const void* b, float eps, float* y, int64_t m,
                int64_t h) {
  parallel_for(m, m * h >= kParallelMinElems, [&](int64_t r) {
    normalize_row(x + r * h, w, b, eps, y + r * h, h,
                  [](const void* p, int64_t i) { return load_f32<W>(p, i); });
  });
}

template <DType W>
void add_layer_norm(float* residual, const float* x, const void* w, const void* b, float eps,
                    int64_t m, int64_t h) {
  parallel_for(m, m * h >= kParallelMinElems, [&](int64_t r) {
    float* res = residual + r * h;
    const float* xr = x + r * h;
    for (int64_t i = 0; i < h; ++i) res[i] += xr[i];
    normalize_row(res, w, b, eps, res, h,
                  [](const void* p, int64_t i) { return load_f32<W>(p, i); });
  });
}

#define FASTLM_INSTANTIATE(W)                                                                     \
  template void layer_norm<W>(const float*, const void*, const void*, float, float*, int64_t,     \
                              int64_t);                                                           \
  template void add_layer_norm<W>(float*, const float*, const void*, const void*, float, int64_t, \
                                  int64_t);
FASTLM_INSTANTIATE(DType::kF32)
FASTLM_INSTANTIATE(DType::kBF16)
FASTLM_INSTANTIATE(DType::kF16)
#undef FASTLM_INSTANTIATE

}  // namespace fastlm::cpu
