#include "cpu/copy_cpu.h"

#include <cstring>

#include "cpu/cpu_common.h"

namespace fastlm::cpu {

void copy_columns(const float* src, int64_t src_cols, int64_t col, float* dst, int64_t t,
                  int64_t n) {
  parallel_for(t, t * n > kParallelMinElems, [&](int64_t r) {
    std::memcpy(dst + r * n, src + r * src_cols + col, static_cast<size_t>(n) * sizeof(float));
  });
}

void gather_rows(const void* src, int64_t row_bytes, const int32_t* idx, int64_t n, void* dst) {
  const char* s = static_cast<const char*>(src);
  char* d = static_cast<char*>(dst);
  for (int64_t i = 0; i < n; ++i) {
    std::memcpy(d + i * row_bytes, s + static_cast<int64_t>(idx[i]) * row_bytes,
                static_cast<size_t>(row_bytes));
  }
}

void add(float* x, const float* y, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > kParallelMinElems)
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

void roberta_positions(const int32_t* ids, const int32_t* qsl, int num_seqs, int32_t pad,
                       int32_t* out) {
  for (int s = 0; s < num_seqs; ++s) {
    int32_t count = 0;
    for (int32_t t = qsl[s]; t < qsl[s + 1]; ++t) {
      const bool real = ids[t] != pad;
      count += real ? 1 : 0;
      out[t] = real ? count + pad : pad;
    }
  }
}

}  // namespace fastlm::cpu
