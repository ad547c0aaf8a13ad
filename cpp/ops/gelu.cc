#include "cpu/gelu_cpu.h"
#include "ops/dispatch.h"
#include "ops/op_checks.h"
#include "ops/ops.h"

namespace fastlm::ops {

void gelu(ExecContext& ctx, Tensor& x, bool tanh_approximation) {
  using namespace detail;
  const char* op = "gelu";
  check_defined(op, "x", x);
  check_device(ctx, op, {&x});
  dispatch(ctx, op, Axis<F32Only>{x.dtype(), "x"}, [&](auto device, auto) {
    if constexpr (is_cpu<decltype(device)>) {
      cpu::gelu(x.data<float>(), x.numel(), tanh_approximation);
    } else {
      no_kernel(device, op);
    }
  });
}

}  // namespace fastlm::ops
