#pragma once
// Bulk float conversions of the CPU bodies (per-ISA; the scalar conversions are core/dtype.h's).
#include <cstdint>

namespace fastlm::cpu {

// float32 -> bfloat16 bits over n values, rounding exactly as f32_to_bf16 (nearest even, NaN
// kept quiet), vectorized on the active ISA.
void f32_to_bf16_n(const float* x, uint16_t* y, int64_t n);

}  // namespace fastlm::cpu
