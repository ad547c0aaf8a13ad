#include "cpu/embedding_cpu.h"
#include "cpu/qblocks.h"
#include "ops/dispatch.h"
#include "ops/op_checks.h"
#include "ops/ops.h"

namespace fastlm::ops {

void embedding(ExecContext& ctx, const Tensor& table, const Tensor& ids, Tensor& out) {
  using namespace detail;
  const char* op = "embedding";
  check_dim(op, "table", table, 2);
  check_tensor(op, "ids", ids, 1, DType::kI32);
  check_dim(op, "out", out, 2);
  const int64_t n = ids.size(0), h = table.size(1);
  FASTLM_CHECK_ARG(out.size(0) == n && out.size(1) == h, "embedding: out must be [", n, ", ", h,
                   "], got ", out.shape_str());
  check_device(ctx, op, {&table, &ids, &out});
  dispatch(ctx, op, Axis<F32Only>{out.dtype(), "out"}, Axis<FloatTypes>{table.dtype(), "table"},
           [&](auto device, auto, auto tt) {
             if constexpr (is_cpu<decltype(device)>) {
               cpu::embedding<decltype(tt)::value>(table.data(), h, ids.data<int32_t>(), n,
                                                   out.data<float>());
             } else {
               no_kernel(device, op);
             }
           });
}

void embedding(ExecContext& ctx, const Weight& table, const Tensor& ids, Tensor& out) {
  if (!table.is_packed()) return embedding(ctx, table.dense, ids, out);
  using namespace detail;
  const char* op = "embedding";
  check_tensor(op, "ids", ids, 1, DType::kI32);
  check_tensor(op, "out", out, 2, DType::kF32);
  const int64_t n = ids.size(0), h = table.cols;
  FASTLM_CHECK_ARG(out.size(0) == n && out.size(1) == h, "embedding: out must be [", n, ", ", h,
                   "], got ", out.shape_str());
  check_device(ctx, op, {&table.packed, &ids, &out});
  if (ctx.device != Device::kCPU) no_kernel(ctx.device, op);
  const size_t row_bytes = qtype_row_bytes(table.qtype, h);
  const auto* base = static_cast<const uint8_t*>(table.packed.data());
  const int32_t* id = ids.data<int32_t>();
  for (int64_t i = 0; i < n; ++i) {
    cpu::dequantize_blocks(table.qtype, base + id[i] * row_bytes, out.data<float>() + i * h, h);
  }
}

}  // namespace fastlm::ops
