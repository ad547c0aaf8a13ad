#pragma once
// Typed bodies of ops::pool / ops::pool_finish (float32 rows).
#include <cstdint>

namespace fastlm::cpu {

// out[s] = rows [qsl[s], qsl[s+1]) of hidden [T, h] pooled by methods[s] (0 CLS, 1 MEAN,
// 2 LAST).
void pool(const float* hidden, int64_t h, const int32_t* qsl, const int32_t* methods,
          int64_t num_seqs, float* out);
// Per row of x [rows, w]: activations[r] (0 none, 1 softmax, 2 sigmoid), then L2 normalization
// where normalize[r] != 0.
void pool_finish(float* x, int64_t rows, int64_t w, const int32_t* activations,
                 const int32_t* normalize);

}  // namespace fastlm::cpu
