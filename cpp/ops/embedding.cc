#include "cpu/embedding_cpu.h"
#include "ops/dispatch.h"
#include "ops/op_checks.h"
#include "ops/ops.h"

namespace fastlm::ops {

void embedding(ExecContext& ctx, const Tensor& table, const Tensor& ids, Tensor& out) {
  using namespace detail;
  const char* op = "embedding";
  check_dim(op, "table", table, 2);
  check_dim(op, "ids", ids, 1);
  check_dim(op, "out", out, 2);
  check_dtype(op, "ids", ids, DType::kI32);
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

}  // namespace fastlm::ops
