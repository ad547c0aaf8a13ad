#include "cpu/silu_mul_cpu.h"
#include "ops/op_checks.h"
#include "ops/ops.h"

namespace fastlm::ops {

void silu_mul(const Tensor& gate_up, Tensor& out) {
  using namespace detail;
  check_dim("silu_mul", "gate_up", gate_up, 2);
  check_dim("silu_mul", "out", out, 2);
  check_dtype("silu_mul", "gate_up", gate_up, DType::kF32);
  check_dtype("silu_mul", "out", out, DType::kF32);
  const int64_t m = gate_up.size(0), i = gate_up.size(1) / 2;
  FASTLM_CHECK_ARG(gate_up.size(1) % 2 == 0, "silu_mul: gate_up ", gate_up.shape_str(),
                   " must have an even width");
  FASTLM_CHECK_ARG(out.size(0) == m && out.size(1) == i, "silu_mul: out must be [", m, ", ", i,
                   "], got ", out.shape_str());
  switch (common_device("silu_mul", {&gate_up, &out})) {
    case Device::kCPU:
      return cpu::silu_mul(gate_up.data<float>(), out.data<float>(), m, i);
    case Device::kCUDA:
      no_cuda("silu_mul");
  }
}

}  // namespace fastlm::ops
