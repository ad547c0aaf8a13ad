#include "cpu/silu_mul_cpu.h"
#include "ops/dispatch.h"
#include "ops/op_checks.h"
#include "ops/ops.h"

namespace fastlm::ops {

void silu_mul(ExecContext& ctx, const Tensor& gate_up, Tensor& out) {
  using namespace detail;
  const char* op = "silu_mul";
  check_dim(op, "gate_up", gate_up, 2);
  check_tensor(op, "out", out, 2, gate_up.dtype());
  const int64_t m = gate_up.size(0), i = gate_up.size(1) / 2;
  FASTLM_CHECK_ARG(gate_up.size(1) % 2 == 0, "silu_mul: gate_up ", gate_up.shape_str(),
                   " must have an even width");
  FASTLM_CHECK_ARG(out.size(0) == m && out.size(1) == i, "silu_mul: out must be [", m, ", ", i,
                   "], got ", out.shape_str());
  check_device(ctx, op, {&gate_up, &out});
  dispatch(ctx, op, Axis<F32Only>{gate_up.dtype(), "gate_up"}, [&](auto device, auto) {
    if constexpr (is_cpu<decltype(device)>) {
      cpu::silu_mul(gate_up.data<float>(), out.data<float>(), m, i);
    } else {
      no_kernel(device, op);
    }
  });
}

}  // namespace fastlm::ops
