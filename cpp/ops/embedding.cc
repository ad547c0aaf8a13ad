#include "cpu/embedding_cpu.h"
#include "ops/op_checks.h"
#include "ops/ops.h"

namespace fastlm::ops {

void embedding(const Tensor& table, const int32_t* ids, int64_t n, Tensor& out) {
  using namespace detail;
  check_dim("embedding", "table", table, 2);
  check_dim("embedding", "out", out, 2);
  check_float("embedding", "table", table);
  check_dtype("embedding", "out", out, DType::kF32);
  const int64_t vocab = table.size(0), h = table.size(1);
  FASTLM_CHECK_ARG(out.size(0) == n && out.size(1) == h, "embedding: out must be [", n, ", ", h,
                   "], got ", out.shape_str());
  FASTLM_CHECK_ARG(n == 0 || ids != nullptr, "embedding: ids is null");
  for (int64_t i = 0; i < n; ++i) {
    FASTLM_CHECK_ARG(ids[i] >= 0 && ids[i] < vocab, "embedding: token id ", ids[i],
                     " outside the vocabulary of ", vocab);
  }
  float* o = out.data<float>();
  switch (common_device("embedding", {&table, &out})) {
    case Device::kCPU:
      switch (table.dtype()) {
        case DType::kF32:
          return cpu::embedding<DType::kF32>(table.data(), h, ids, n, o);
        case DType::kBF16:
          return cpu::embedding<DType::kBF16>(table.data(), h, ids, n, o);
        case DType::kF16:
          return cpu::embedding<DType::kF16>(table.data(), h, ids, n, o);
        case DType::kI32:
        case DType::kI64:
        case DType::kU8:
          break;  // rejected by check_float
      }
      break;
    case Device::kCUDA:
      no_cuda("embedding");
  }
}

}  // namespace fastlm::ops
