#include "cpu/add_bias_cpu.h"
#include "ops/op_checks.h"
#include "ops/ops.h"

namespace fastlm::ops {

void add_bias(Tensor& x, const Tensor& b) {
  using namespace detail;
  check_dim("add_bias", "x", x, 2);
  check_dim("add_bias", "b", b, 1);
  check_dtype("add_bias", "x", x, DType::kF32);
  check_float("add_bias", "b", b);
  const int64_t m = x.size(0), n = x.size(1);
  FASTLM_CHECK_ARG(b.size(0) == n, "add_bias: b ", b.shape_str(), " does not match x ",
                   x.shape_str());
  float* xp = x.data<float>();
  switch (common_device("add_bias", {&x, &b})) {
    case Device::kCPU:
      switch (b.dtype()) {
        case DType::kF32:
          return cpu::add_bias<DType::kF32>(xp, b.data(), m, n);
        case DType::kBF16:
          return cpu::add_bias<DType::kBF16>(xp, b.data(), m, n);
        case DType::kF16:
          return cpu::add_bias<DType::kF16>(xp, b.data(), m, n);
        case DType::kI32:
        case DType::kI64:
        case DType::kU8:
          break;  // rejected by check_float
      }
      break;
    case Device::kCUDA:
      no_cuda("add_bias");
  }
}

}  // namespace fastlm::ops
