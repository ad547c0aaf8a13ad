#include "cpu/rms_norm_cpu.h"
#include "ops/op_checks.h"
#include "ops/ops.h"

namespace fastlm::ops {

void head_rms_norm(Tensor& x, const Tensor& w, int head_dim, float eps) {
  using namespace detail;
  check_dim("head_rms_norm", "x", x, 2);
  check_dim("head_rms_norm", "w", w, 1);
  check_dtype("head_rms_norm", "x", x, DType::kF32);
  check_float("head_rms_norm", "w", w);
  FASTLM_CHECK_ARG(head_dim > 0 && x.size(1) % head_dim == 0, "head_rms_norm: x ", x.shape_str(),
                   " is not a whole number of heads of ", head_dim);
  FASTLM_CHECK_ARG(w.size(0) == head_dim, "head_rms_norm: w ", w.shape_str(), " must be [",
                   head_dim, "]");
  const int64_t count = x.numel() / head_dim;
  float* xp = x.data<float>();
  switch (common_device("head_rms_norm", {&x, &w})) {
    case Device::kCPU:
      switch (w.dtype()) {
        case DType::kF32:
          return cpu::head_rms_norm<DType::kF32>(xp, w.data(), count, head_dim, eps);
        case DType::kBF16:
          return cpu::head_rms_norm<DType::kBF16>(xp, w.data(), count, head_dim, eps);
        case DType::kF16:
          return cpu::head_rms_norm<DType::kF16>(xp, w.data(), count, head_dim, eps);
        case DType::kI32:
        case DType::kI64:
        case DType::kU8:
          break;  // rejected by check_float
      }
      break;
    case Device::kCUDA:
      no_cuda("head_rms_norm");
  }
}

}  // namespace fastlm::ops
