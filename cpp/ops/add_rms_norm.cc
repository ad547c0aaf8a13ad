#include "cpu/rms_norm_cpu.h"
#include "ops/dispatch.h"
#include "ops/op_checks.h"
#include "ops/ops.h"

namespace fastlm::ops {

void add_rms_norm(ExecContext& ctx, Tensor& residual, const Tensor& x, const Tensor& w, float eps,
                  Tensor& y) {
  using namespace detail;
  const char* op = "add_rms_norm";
  check_tensor(op, "residual", residual, 2, x.dtype());
  check_dim(op, "x", x, 2);
  check_dim(op, "w", w, 1);
  check_tensor(op, "y", y, 2, x.dtype());
  const int64_t m = x.size(0), h = x.size(1);
  FASTLM_CHECK_ARG(residual.shape() == x.shape() && y.shape() == x.shape(),
                   "add_rms_norm: residual ", residual.shape_str(), ", x ", x.shape_str(),
                   " and y ", y.shape_str(), " must have one shape");
  FASTLM_CHECK_ARG(w.size(0) == h, "add_rms_norm: w ", w.shape_str(), " does not match x ",
                   x.shape_str());
  FASTLM_CHECK_ARG(y.data() != residual.data() || m * h == 0,
                   "add_rms_norm: y must not alias residual");
  check_device(ctx, op, {&residual, &x, &w, &y});
  dispatch(ctx, op, Axis<F32Only>{x.dtype(), "x"}, Axis<FloatTypes>{w.dtype(), "w"},
           [&](auto device, auto, auto wt) {
             if constexpr (is_cpu<decltype(device)>) {
               cpu::add_rms_norm<decltype(wt)::value>(residual.data<float>(), x.data<float>(),
                                                      w.data(), eps, y.data<float>(), m, h);
             } else {
               no_kernel(device, op);
             }
           });
}

}  // namespace fastlm::ops
