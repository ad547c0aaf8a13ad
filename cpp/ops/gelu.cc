#include "cpu/gelu_cpu.h"
#include "ops/op_checks.h"
#include "ops/ops.h"

namespace fastlm::ops {

void gelu(Tensor& x, bool tanh_approximation) {
  using namespace detail;
  check_defined("gelu", "x", x);
  check_dtype("gelu", "x", x, DType::kF32);
  switch (common_device("gelu", {&x})) {
    case Device::kCPU:
      return cpu::gelu(x.data<float>(), x.numel(), tanh_approximation);
    case Device::kCUDA:
      no_cuda("gelu");
  }
}

}  // namespace fastlm::ops
