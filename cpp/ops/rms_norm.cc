#include "cpu/rms_norm_cpu.h"
#include "ops/dispatch.h"
#include "ops/op_checks.h"
#include "ops/ops.h"

namespace fastlm::ops {

void rms_norm(ExecContext& ctx, const Tensor& x, const Tensor& w, float eps, Tensor& y) {
  using namespace detail;
  const char* op = "rms_norm";
  check_dim(op, "x", x, 2);
  check_dim(op, "w", w, 1);
  check_tensor(op, "y", y, 2, x.dtype());
  const int64_t m = x.size(0), h = x.size(1);
  FASTLM_CHECK_ARG(w.size(0) == h, "rms_norm: w ", w.shape_str(), " does not match x ",
                   x.shape_str());
  FASTLM_CHECK_ARG(y.shape() == x.shape(), "rms_norm: y ", y.shape_str(), " must match x ",
                   x.shape_str());
  check_device(ctx, op, {&x, &w, &y});
  dispatch(ctx, op, Axis<F32Only>{x.dtype(), "x"}, Axis<FloatTypes>{w.dtype(), "w"},
           [&](auto device, auto, auto wt) {
             if constexpr (is_cpu<decltype(device)>) {
               cpu::rms_norm<decltype(wt)::value>(x.data<float>(), w.data(), eps, y.data<float>(),
                                                  m, h);
             } else {
               no_kernel(device, op);
             }
           });
}

}  // namespace fastlm::ops
