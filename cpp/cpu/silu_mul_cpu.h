#pragma once
// Typed body of ops::silu_mul (float32).
#include <cstdint>

namespace fastlm::cpu {

// out[r, :i] = silu(gate_up[r, :i]) * gate_up[r, i:2i] for r < m.
void silu_mul(const float* gate_up, float* out, int64_t m, int64_t i);

}  // namespace fastlm::cpu
