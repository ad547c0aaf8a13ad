#pragma once
// Typed body of ops::gelu (float32, in place).
#include <cstdint>

namespace fastlm::cpu {

// x = gelu(x) for n elements: the exact erf form, or the tanh approximation.
void gelu(float* x, int64_t n, bool tanh_approximation);

}  // namespace fastlm::cpu
