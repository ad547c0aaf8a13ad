#include "cpu/add_bias_cpu.h"

#include "cpu/cpu_common.h"

namespace fastlm::cpu {

template <DType B>
void add_bias(float* x, const void* b, int64_t m, int64_t n) {
  parallel_for(m, m * n >= kParallelMinElems, [&](int64_t r) {
    float* xr = x + r * n;
    for (int64_t j = 0; j < n; ++j) xr[j] += load_f32<B>(b, j);
  });
}

template void add_bias<DType::kF32>(float*, const void*, int64_t, int64_t);
template void add_bias<DType::kBF16>(float*, const void*, int64_t, int64_t);
template void add_bias<DType::kF16>(float*, const void*, int64_t, int64_t);

}  // namespace fastlm::cpu
