#include "cpu/encoder_attention_cpu.h"
#include "ops/dispatch.h"
#include "ops/op_checks.h"
#include "ops/ops.h"

namespace fastlm::ops {

void encoder_attention(ExecContext& ctx, const Tensor& qkv, const Tensor& query_start_loc,
                       int num_heads, int head_dim, float scale, Tensor& out) {
  using namespace detail;
  const char* op = "encoder_attention";
  check_dim(op, "qkv", qkv, 2);
  check_tensor(op, "out", out, 2, qkv.dtype());
  check_tensor(op, "query_start_loc", query_start_loc, 1, DType::kI32);
  const int num_seqs = static_cast<int>(query_start_loc.size(0)) - 1;
  FASTLM_CHECK_ARG(num_seqs > 0 && num_heads > 0 && head_dim > 0,
                   "encoder_attention: num_seqs, num_heads and head_dim must be positive");
  const int64_t hd = static_cast<int64_t>(num_heads) * head_dim;
  FASTLM_CHECK_ARG(qkv.size(1) == 3 * hd, "encoder_attention: qkv ", qkv.shape_str(),
                   " must have 3 * num_heads * head_dim = ", 3 * hd, " columns");
  FASTLM_CHECK_ARG(out.size(0) == qkv.size(0) && out.size(1) == hd, "encoder_attention: out ",
                   out.shape_str(), " must be [", qkv.size(0), ", ", hd, "]");
  check_device(ctx, op, {&qkv, &query_start_loc, &out});
  dispatch(ctx, op, Axis<F32Only>{qkv.dtype(), "qkv"}, [&](auto device, auto) {
    if constexpr (is_cpu<decltype(device)>) {
      cpu::encoder_attention(qkv.data<float>(), query_start_loc.data<int32_t>(), num_seqs,
                             num_heads, head_dim, scale, out.data<float>());
    } else {
      no_kernel(device, op);
    }
  });
}

}  // namespace fastlm::ops
