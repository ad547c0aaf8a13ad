#pragma once
// Typed bodies of ops::rms_norm, ops::add_rms_norm and ops::head_rms_norm. W is the weight
// dtype (f32, bf16 or f16); activations are float32.
#include <cstdint>

#include "core/dtype.h"

namespace fastlm::cpu {

// y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w for rows r < m of width h; y may alias x.
template <DType W>
void rms_norm(const float* x, const void* w, float eps, float* y, int64_t m, int64_t h);

// residual[r] += x[r]; y[r] = rms_norm(residual[r]). y may alias x.
template <DType W>
void add_rms_norm(float* residual, const float* x, const void* w, float eps, float* y, int64_t m,
                  int64_t h);

// In place over each head_dim chunk of x (count chunks of width head_dim).
template <DType W>
void head_rms_norm(float* x, const void* w, int64_t count, int64_t head_dim, float eps);

}  // namespace fastlm::cpu
