#include "cpu/layer_norm_cpu.h"
#include "ops/dispatch.h"
#include "ops/op_checks.h"
#include "ops/ops.h"

namespace fastlm::ops {

namespace {

void check_params(const char* op, const Tensor& x, const Tensor& w, const Tensor& b) {
  using namespace detail;
  check_dim(op, "x", x, 2);
  check_dim(op, "w", w, 1);
  check_dim(op, "b", b, 1);
  FASTLM_CHECK_ARG(b.dtype() == w.dtype(), op, ": w and b must share a dtype, got ",
                   dtype_name(w.dtype()), " and ", dtype_name(b.dtype()));
  FASTLM_CHECK_ARG(w.size(0) == x.size(1) && b.size(0) == x.size(1), op, ": w ", w.shape_str(),
                   " / b ", b.shape_str(), " do not match x ", x.shape_str());
}

}  // namespace

void layer_norm(ExecContext& ctx, const Tensor& x, const Tensor& w, const Tensor& b, float eps,
                Tensor& y) {
  using namespace detail;
  const char* op = "layer_norm";
  check_params(op, x, w, b);
  check_dtype(op, "y", y, x.dtype());
  FASTLM_CHECK_ARG(y.shape() == x.shape(), "layer_norm: y ", y.shape_str(), " must match x ",
                   x.shape_str());
  const int64_t m = x.size(0), h = x.size(1);
  check_device(ctx, op, {&x, &w, &b, &y});
  dispatch(ctx, op, Axis<F32Only>{x.dtype(), "x"}, Axis<FloatTypes>{w.dtype(), "w"},
           [&](auto device, auto, auto wt) {
             if constexpr (is_cpu<decltype(device)>) {
               cpu::layer_norm<decltype(wt)::value>(x.data<float>(), w.data(), b.data(), eps,
                                                    y.data<float>(), m, h);
             } else {
               no_kernel(device, op);
             }
           });
}

void add_layer_norm(ExecContext& ctx, Tensor& residual, const Tensor& x, const Tensor& w,
                    const Tensor& b, float eps) {
  using namespace detail;
  const char* op = "add_layer_norm";
  check_params(op, x, w, b);
  check_dtype(op, "residual", residual, x.dtype());
  FASTLM_CHECK_ARG(residual.shape() == x.shape(), "add_layer_norm: residual ", residual.shape_str(),
                   " must match x ", x.shape_str());
  const int64_t m = x.size(0), h = x.size(1);
  check_device(ctx, op, {&residual, &x, &w, &b});
  dispatch(ctx, op, Axis<F32Only>{x.dtype(), "x"}, Axis<FloatTypes>{w.dtype(), "w"},
           [&](auto device, auto, auto wt) {
             if constexpr (is_cpu<decltype(device)>) {
               cpu::add_layer_norm<decltype(wt)::value>(residual.data<float>(), x.data<float>(),
                                                        w.data(), b.data(), eps, m, h);
             } else {
               no_kernel(device, op);
             }
           });
}

}  // namespace fastlm::ops
