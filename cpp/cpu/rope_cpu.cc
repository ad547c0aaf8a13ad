#include "cpu/rope_cpu.h"

#include "cpu/cpu_common.h"

namespace fastlm::cpu {

void rope(float* x, int64_t t, int64_t heads, int64_t head_dim, const int32_t* positions,
          const float* cos_sin, int64_t rot_dim) {
  const int64_t half = rot_dim / 2;
  parallel_for(t, t * heads * head_dim >= kParallelMinElems, [&](int64_t i) {
    const float* cos = cos_sin + static_cast<int64_t>(positions[i]) * rot_dim;
    const float* sin = cos + half;
    for (int64_t h = 0; h < heads; ++h) {
      float* x1 = x + (i * heads + h) * head_dim;
      float* x2 = x1 + half;
      for (int64_t j = 0; j < half; ++j) {
        const float a = x1[j], b = x2[j];
        x1[j] = a * cos[j] - b * sin[j];
        x2[j] = b * cos[j] + a * sin[j];
      }
    }
  });
}

}  // namespace fastlm::cpu
