#include "cpu/add_bias_cpu.h"
#include "ops/dispatch.h"
#include "ops/op_checks.h"
#include "ops/ops.h"

namespace fastlm::ops {

void add_bias(ExecContext& ctx, Tensor& x, const Tensor& b) {
  using namespace detail;
  const char* op = "add_bias";
  check_dim(op, "x", x, 2);
  check_dim(op, "b", b, 1);
  const int64_t m = x.size(0), n = x.size(1);
  FASTLM_CHECK_ARG(b.size(0) == n, "add_bias: b ", b.shape_str(), " does not match x ",
                   x.shape_str());
  check_device(ctx, op, {&x, &b});
  dispatch(ctx, op, Axis<F32Only>{x.dtype(), "x"}, Axis<FloatTypes>{b.dtype(), "b"},
           [&](auto device, auto, auto bt) {
             if constexpr (is_cpu<decltype(device)>) {
               cpu::add_bias<decltype(bt)::value>(x.data<float>(), b.data(), m, n);
             } else {
               no_kernel(device, op);
             }
           });
}

}  // namespace fastlm::ops
