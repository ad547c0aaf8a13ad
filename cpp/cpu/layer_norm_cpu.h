#pragma once
// Typed bodies of ops::layer_norm and ops::add_layer_norm. Activations float32; weight and bias
// of dtype W.
#include <cstdint>

#include "core/dtype.h"

namespace fastlm::cpu {

// y[r] = (x[r] - mean) / sqrt(var + eps) * w + b for rows r < m of width h; y may alias x.
template <DType W>
void layer_norm(const float* x, const void* w, const void* b, float eps, float* y, int64_t m,
                int64_t h);

// residual[r] = layer_norm(residual[r] + x[r]) in place (BERT's post-norm residual).
template <DType W>
void add_layer_norm(float* residual, const float* x, const void* w, const void* b, float eps,
                    int64_t m, int64_t h);

}  // namespace fastlm::cpu
