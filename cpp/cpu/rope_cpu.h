#pragma once
// Typed body of ops::rope (float32 activations and cos/sin cache).
#include <cstdint>

namespace fastlm::cpu {

// In place on x [t, heads * head_dim]: the first rot_dim dims of each head rotate in the
// rotate_half layout (dim i pairs with i + rot_dim/2); cos_sin rows are [cos(rot/2), sin(rot/2)].
void rope(float* x, int64_t t, int64_t heads, int64_t head_dim, const int32_t* positions,
          const float* cos_sin, int64_t rot_dim);

}  // namespace fastlm::cpu
