#include "cpu/embedding_cpu.h"
#include "cpu/qblocks.h"
#include "ops/op_checks.h"
#include "ops/ops.h"

namespace fastlm::ops {
namespace {

// out [n, h] float32 and ids in [0, vocab), for both table kinds.
void check_rows(const Tensor& out, const int32_t* ids, int64_t n, int64_t vocab, int64_t h) {
  using namespace detail;
  check_dim("embedding", "out", out, 2);
  check_dtype("embedding", "out", out, DType::kF32);
  FASTLM_CHECK_ARG(out.size(0) == n && out.size(1) == h, "embedding: out must be [", n, ", ", h,
                   "], got ", out.shape_str());
  FASTLM_CHECK_ARG(n == 0 || ids != nullptr, "embedding: ids is null");
  for (int64_t i = 0; i < n; ++i) {
    FASTLM_CHECK_ARG(ids[i] >= 0 && ids[i] < vocab, "embedding: token id ", ids[i],
                     " outside the vocabulary of ", vocab);
  }
}

}  // namespace

void embedding(const Tensor& table, const int32_t* ids, int64_t n, Tensor& out) {
  using namespace detail;
  check_dim("embedding", "table", table, 2);
  check_float("embedding", "table", table);
  const int64_t h = table.size(1);
  check_rows(out, ids, n, table.size(0), h);
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

void embedding(const Weight& table, const int32_t* ids, int64_t n, Tensor& out) {
  if (!table.is_packed()) return embedding(table.dense, ids, n, out);
  using namespace detail;
  const int64_t h = table.cols;
  check_rows(out, ids, n, table.rows, h);
  switch (common_device("embedding", {&table.packed, &out})) {
    case Device::kCPU: {
      const size_t row_bytes = qtype_row_bytes(table.qtype, h);
      const auto* base = static_cast<const uint8_t*>(table.packed.data());
      for (int64_t i = 0; i < n; ++i) {
        cpu::dequantize_blocks(table.qtype, base + ids[i] * row_bytes, out.data<float>() + i * h,
                               h);
      }
      return;
    }
    case Device::kCUDA:
      no_cuda("embedding");
  }
}

}  // namespace fastlm::ops
