#include "cpu/embedding_cpu.h"

#include <cstring>

#include "cpu/cpu_common.h"

namespace fastlm::cpu {

template <DType T>
void embedding(const void* table, int64_t hidden, const int32_t* ids, int64_t n, float* out) {
  parallel_for(n, n * hidden >= kParallelMinElems, [&](int64_t i) {
    const int64_t row = static_cast<int64_t>(ids[i]) * hidden;
    float* o = out + i * hidden;
    if constexpr (T == DType::kF32) {
      std::memcpy(o, static_cast<const float*>(table) + row, hidden * sizeof(float));
    } else {
      for (int64_t j = 0; j < hidden; ++j) o[j] = load_f32<T>(table, row + j);
    }
  });
}

template void embedding<DType::kF32>(const void*, int64_t, const int32_t*, int64_t, float*);
template void embedding<DType::kBF16>(const void*, int64_t, const int32_t*, int64_t, float*);
template void embedding<DType::kF16>(const void*, int64_t, const int32_t*, int64_t, float*);

}  // namespace fastlm::cpu
