#include "cpu/silu_mul_cpu.h"

#include <cmath>

#include "cpu/cpu_common.h"

namespace fastlm::cpu {

void silu_mul(const float* gate_up, float* out, int64_t m, int64_t i) {
#pragma omp parallel for schedule(static) if (m * i >= kParallelMinElems)
  for (int64_t r = 0; r < m; ++r) {
    const float* g = gate_up + r * 2 * i;
    const float* u = g + i;
    float* o = out + r * i;
    for (int64_t j = 0; j < i; ++j) o[j] = g[j] / (1.0f + fast_exp(-g[j])) * u[j];
  }
}

}  // namespace fastlm::cpu
