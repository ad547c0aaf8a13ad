#include "cpu/rms_norm_cpu.h"
#include "ops/op_checks.h"
#include "ops/ops.h"

namespace fastlm::ops {

void add_rms_norm(Tensor& residual, const Tensor& x, const Tensor& w, float eps, Tensor& y) {
  using namespace detail;
  check_dim("add_rms_norm", "residual", residual, 2);
  check_dim("add_rms_norm", "x", x, 2);
  check_dim("add_rms_norm", "w", w, 1);
  check_dim("add_rms_norm", "y", y, 2);
  check_dtype("add_rms_norm", "residual", residual, DType::kF32);
  check_dtype("add_rms_norm", "x", x, DType::kF32);
  check_dtype("add_rms_norm", "y", y, DType::kF32);
  check_float("add_rms_norm", "w", w);
  const int64_t m = x.size(0), h = x.size(1);
  FASTLM_CHECK_ARG(residual.shape() == x.shape() && y.shape() == x.shape(),
                   "add_rms_norm: residual ", residual.shape_str(), ", x ", x.shape_str(),
                   " and y ", y.shape_str(), " must have one shape");
  FASTLM_CHECK_ARG(w.size(0) == h, "add_rms_norm: w ", w.shape_str(), " does not match x ",
                   x.shape_str());
  FASTLM_CHECK_ARG(y.data() != residual.data() || m * h == 0,
                   "add_rms_norm: y must not alias residual");
  float* r = residual.data<float>();
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  switch (common_device("add_rms_norm", {&residual, &x, &w, &y})) {
    case Device::kCPU:
      switch (w.dtype()) {
        case DType::kF32:
          return cpu::add_rms_norm<DType::kF32>(r, xp, w.data(), eps, yp, m, h);
        case DType::kBF16:
          return cpu::add_rms_norm<DType::kBF16>(r, xp, w.data(), eps, yp, m, h);
        case DType::kF16:
          return cpu::add_rms_norm<DType::kF16>(r, xp, w.data(), eps, yp, m, h);
        case DType::kI32:
        case DType::kI64:
        case DType::kU8:
          break;  // rejected by check_float
      }
      break;
    case Device::kCUDA:
      no_cuda("add_rms_norm");
  }
}

}  // namespace fastlm::ops
