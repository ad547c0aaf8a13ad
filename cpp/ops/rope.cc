#include "cpu/rope_cpu.h"
#include "ops/dispatch.h"
#include "ops/op_checks.h"
#include "ops/ops.h"

namespace fastlm::ops {

void rope(ExecContext& ctx, Tensor& q, Tensor& k, const Tensor& positions, const Tensor& cos_sin,
          int head_dim) {
  using namespace detail;
  const char* op = "rope";
  check_dim(op, "q", q, 2);
  check_tensor(op, "k", k, 2, q.dtype());
  check_tensor(op, "positions", positions, 1, DType::kI32);
  check_tensor(op, "cos_sin", cos_sin, 2, DType::kF32);
  const int64_t t = q.size(0);
  FASTLM_CHECK_ARG(k.size(0) == t && positions.size(0) == t, "rope: q ", q.shape_str(), ", k ",
                   k.shape_str(), " and positions ", positions.shape_str(),
                   " disagree on the token count");
  FASTLM_CHECK_ARG(head_dim > 0 && q.size(1) % head_dim == 0 && k.size(1) % head_dim == 0,
                   "rope: q ", q.shape_str(), " / k ", k.shape_str(), " are not whole heads of ",
                   head_dim);
  // cos_sin may cover fewer dims than head_dim (partial rotary); those dims rotate, the rest
  // pass through.
  const int64_t rot = cos_sin.size(1);
  FASTLM_CHECK_ARG(rot > 0 && rot % 2 == 0 && rot <= head_dim, "rope: cos_sin ",
                   cos_sin.shape_str(), " must have an even width <= head_dim ", head_dim);
  check_device(ctx, op, {&q, &k, &positions, &cos_sin});
  dispatch(ctx, op, Axis<F32Only>{q.dtype(), "q"}, [&](auto device, auto) {
    if constexpr (is_cpu<decltype(device)>) {
      const int32_t* pos = positions.data<int32_t>();
      cpu::rope(q.data<float>(), t, q.size(1) / head_dim, head_dim, pos, cos_sin.data<float>(),
                rot);
      cpu::rope(k.data<float>(), t, k.size(1) / head_dim, head_dim, pos, cos_sin.data<float>(),
                rot);
    } else {
      no_kernel(device, op);
    }
  });
}

}  // namespace fastlm::ops
