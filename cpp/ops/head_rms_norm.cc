#include "cpu/rms_norm_cpu.h"
#include "ops/dispatch.h"
#include "ops/op_checks.h"
#include "ops/ops.h"

namespace fastlm::ops {

void head_rms_norm(ExecContext& ctx, Tensor& x, const Tensor& w, int head_dim, float eps) {
  using namespace detail;
  const char* op = "head_rms_norm";
  check_dim(op, "x", x, 2);
  check_dim(op, "w", w, 1);
  FASTLM_CHECK_ARG(head_dim > 0 && x.size(1) % head_dim == 0, "head_rms_norm: x ", x.shape_str(),
                   " is not a whole number of heads of ", head_dim);
  FASTLM_CHECK_ARG(w.size(0) == head_dim, "head_rms_norm: w ", w.shape_str(), " must be [",
                   head_dim, "]");
  const int64_t count = x.numel() / head_dim;
  check_device(ctx, op, {&x, &w});
  dispatch(ctx, op, Axis<F32Only>{x.dtype(), "x"}, Axis<FloatTypes>{w.dtype(), "w"},
           [&](auto device, auto, auto wt) {
             if constexpr (is_cpu<decltype(device)>) {
               cpu::head_rms_norm<decltype(wt)::value>(x.data<float>(), w.data(), count, head_dim,
                                                       eps);
             } else {
               no_kernel(device, op);
             }
           });
}

}  // namespace fastlm::ops
