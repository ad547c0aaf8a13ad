#include "cpu/rms_norm_cpu.h"
#include "ops/op_checks.h"
#include "ops/ops.h"

namespace fastlm::ops {

void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& y) {
  using namespace detail;
  check_dim("rms_norm", "x", x, 2);
  check_dim("rms_norm", "w", w, 1);
  check_dim("rms_norm", "y", y, 2);
  check_dtype("rms_norm", "x", x, DType::kF32);
  check_dtype("rms_norm", "y", y, DType::kF32);
  check_float("rms_norm", "w", w);
  const int64_t m = x.size(0), h = x.size(1);
  FASTLM_CHECK_ARG(w.size(0) == h, "rms_norm: w ", w.shape_str(), " does not match x ",
                   x.shape_str());
  FASTLM_CHECK_ARG(y.shape() == x.shape(), "rms_norm: y ", y.shape_str(), " must match x ",
                   x.shape_str());
  switch (common_device("rms_norm", {&x, &w, &y})) {
    case Device::kCPU:
      switch (w.dtype()) {
        case DType::kF32:
          return cpu::rms_norm<DType::kF32>(x.data<float>(), w.data(), eps, y.data<float>(), m, h);
        case DType::kBF16:
          return cpu::rms_norm<DType::kBF16>(x.data<float>(), w.data(), eps, y.data<float>(), m, h);
        case DType::kF16:
          return cpu::rms_norm<DType::kF16>(x.data<float>(), w.data(), eps, y.data<float>(), m, h);
        case DType::kI32:
        case DType::kI64:
        case DType::kU8:
          break;  // rejected by check_float
      }
      break;
    case Device::kCUDA:
      no_cuda("rms_norm");
  }
}

}  // namespace fastlm::ops
