#include "cpu/cross_attention_cpu.h"
#include "ops/dispatch.h"
#include "ops/op_checks.h"
#include "ops/ops.h"

namespace fastlm::ops {

void cross_attention(ExecContext& ctx, const Tensor& q, const Tensor& k_cache,
                     const Tensor& v_cache, const Tensor& block_tables, int num_keys, int num_heads,
                     int head_dim, float scale, Tensor& out) {
  using namespace detail;
  const char* op = "cross_attention";
  check_dim(op, "q", q, 2);
  check_tensor(op, "out", out, 2, q.dtype());
  check_dim(op, "k_cache", k_cache, 4);
  check_dim(op, "v_cache", v_cache, 4);
  check_tensor(op, "block_tables", block_tables, 2, DType::kI32);
  FASTLM_CHECK_ARG(num_heads > 0 && head_dim > 0 && num_keys > 0, op,
                   ": num_heads, head_dim and num_keys must be positive");
  const int64_t t = q.size(0);
  FASTLM_CHECK_ARG(q.size(1) == static_cast<int64_t>(num_heads) * head_dim, op, ": q ",
                   q.shape_str(), " must be [T, ", num_heads, " * ", head_dim, "]");
  FASTLM_CHECK_ARG(out.shape() == q.shape() && (out.data() != q.data() || t == 0), op, ": out ",
                   out.shape_str(), " must match q ", q.shape_str(), " and not alias it");
  FASTLM_CHECK_ARG(k_cache.shape() == v_cache.shape() && k_cache.dtype() == v_cache.dtype(), op,
                   ": k_cache and v_cache differ in shape or dtype");
  const int64_t block_size = k_cache.size(1);
  FASTLM_CHECK_ARG(k_cache.size(2) == num_heads && k_cache.size(3) == head_dim, op, ": cache ",
                   k_cache.shape_str(), " must be [num_blocks, block_size, ", num_heads, ", ",
                   head_dim, "]");
  FASTLM_CHECK_ARG(block_tables.size(0) == t && block_tables.size(1) * block_size >= num_keys, op,
                   ": block_tables ", block_tables.shape_str(), " must be [", t,
                   ", >= num_keys / block_size] (num_keys ", num_keys, ")");
  // Block ids were validated where the batch was built (ops/batch_checks.h).
  check_device(ctx, op, {&q, &k_cache, &v_cache, &out, &block_tables});
  cpu::CrossAttentionArgs args;
  args.q = q.data<float>();
  args.k_cache = k_cache.data();
  args.v_cache = v_cache.data();
  args.out = out.data<float>();
  args.num_rows = static_cast<int>(t);
  args.block_tables = block_tables.data<int32_t>();
  args.blocks_per_row = static_cast<int>(block_tables.size(1));
  args.block_size = static_cast<int>(block_size);
  args.num_keys = num_keys;
  args.num_heads = num_heads;
  args.head_dim = head_dim;
  args.scale = scale;
  dispatch(ctx, op, Axis<F32Only>{q.dtype(), "q"}, Axis<CacheTypes>{k_cache.dtype(), "cache"},
           [&](auto device, auto, auto ct) {
             if constexpr (is_cpu<decltype(device)>) {
               cpu::cross_attention<decltype(ct)::value>(args);
             } else {
               no_kernel(device, op);
             }
           });
}

}  // namespace fastlm::ops
