#pragma once
// Typed body of ops::add_bias. B is the bias dtype.
#include <cstdint>

#include "core/dtype.h"

namespace fastlm::cpu {

// x[r, :] += b for r < m (x float32 [m, n]).
template <DType B>
void add_bias(float* x, const void* b, int64_t m, int64_t n);

}  // namespace fastlm::cpu
