// Pooling ops: hidden states -> pooled vectors, and the activation / normalization after the
// head. They run on the device that holds the hidden states; only pooled rows come back.
#include "ops/pool.h"

#include "cpu/pool_cpu.h"
#include "ops/dispatch.h"
#include "ops/op_checks.h"

namespace fastlm::ops {

void pool(ExecContext& ctx, const Tensor& hidden, const Tensor& query_start_loc,
          const Tensor& methods, Tensor& pooled) {
  using namespace detail;
  const char* op = "pool";
  check_dim(op, "hidden", hidden, 2);
  check_tensor(op, "methods", methods, 1, DType::kI32);
  const int64_t s = methods.size(0);
  check_shape(op, "query_start_loc", query_start_loc, DType::kI32, {s + 1});
  check_shape(op, "pooled", pooled, DType::kF32, {s, hidden.size(1)});
  check_device(ctx, op, {&hidden, &query_start_loc, &methods, &pooled});
  dispatch(ctx, op, Axis<F32Only>{hidden.dtype(), "hidden"}, [&](auto device, auto) {
    if constexpr (is_cpu<decltype(device)>) {
      cpu::pool(hidden.data<float>(), hidden.size(1), query_start_loc.data<int32_t>(),
                methods.data<int32_t>(), s, pooled.data<float>());
    } else {
      no_kernel(device, op);
    }
  });
}

void pool_finish(ExecContext& ctx, Tensor& x, const Tensor& activations, const Tensor& normalize) {
  using namespace detail;
  const char* op = "pool_finish";
  check_dim(op, "x", x, 2);
  check_shape(op, "activations", activations, DType::kI32, {x.size(0)});
  check_shape(op, "normalize", normalize, DType::kI32, {x.size(0)});
  check_device(ctx, op, {&x, &activations, &normalize});
  dispatch(ctx, op, Axis<F32Only>{x.dtype(), "x"}, [&](auto device, auto) {
    if constexpr (is_cpu<decltype(device)>) {
      cpu::pool_finish(x.data<float>(), x.size(0), x.size(1), activations.data<int32_t>(),
                       normalize.data<int32_t>());
    } else {
      no_kernel(device, op);
    }
  });
}

}  // namespace fastlm::ops
