#include "cpu/write_kv_cpu.h"

#include "cpu/cpu_common.h"

namespace fastlm::cpu {

template <DType C>
void write_kv(const float* k, const float* v, void* k_cache, void* v_cache,
              const int64_t* slot_mapping, int64_t t, int64_t width) {
  parallel_for(t, t * width >= kParallelMinElems, [&](int64_t i) {
    const int64_t slot = slot_mapping[i];
    if (slot < 0) return;
    const int64_t dst = slot * width;
    for (int64_t j = 0; j < width; ++j) {
      store_f32<C>(k_cache, dst + j, k[i * width + j]);
      store_f32<C>(v_cache, dst + j, v[i * width + j]);
    }
  });
}

template void write_kv<DType::kF32>(const float*, const float*, void*, void*, const int64_t*,
                                    int64_t, int64_t);
template void write_kv<DType::kBF16>(const float*, const float*, void*, void*, const int64_t*,
                                     int64_t, int64_t);

}  // namespace fastlm::cpu
