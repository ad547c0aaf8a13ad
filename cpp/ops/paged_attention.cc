#include "cpu/paged_attention_cpu.h"
#include "ops/dispatch.h"
#include "ops/op_checks.h"
#include "ops/ops.h"

namespace fastlm::ops {

void paged_attention(ExecContext& ctx, const Tensor& q, const Tensor& k_cache,
                     const Tensor& v_cache, const AttentionBatch& batch, int num_q_heads,
                     int num_kv_heads, int head_dim, float scale, int sliding_window, Tensor& out) {
  using namespace detail;
  const char* op = "paged_attention";
  check_dim(op, "q", q, 2);
  check_tensor(op, "out", out, 2, q.dtype());
  check_dim(op, "k_cache", k_cache, 4);
  check_dim(op, "v_cache", v_cache, 4);
  FASTLM_CHECK_ARG(num_q_heads > 0 && num_kv_heads > 0 && num_q_heads % num_kv_heads == 0, op,
                   ": num_q_heads ", num_q_heads, " must be a multiple of num_kv_heads ",
                   num_kv_heads);
  FASTLM_CHECK_ARG(head_dim > 0, op, ": head_dim must be positive");
  const int64_t t = q.size(0);
  FASTLM_CHECK_ARG(q.size(1) == static_cast<int64_t>(num_q_heads) * head_dim, op, ": q ",
                   q.shape_str(), " must be [T, ", num_q_heads, " * ", head_dim, "]");
  FASTLM_CHECK_ARG(out.shape() == q.shape(), op, ": out ", out.shape_str(), " must match q ",
                   q.shape_str());
  FASTLM_CHECK_ARG(out.data() != q.data() || t == 0, op, ": out must not alias q");
  FASTLM_CHECK_ARG(k_cache.shape() == v_cache.shape() && k_cache.dtype() == v_cache.dtype(), op,
                   ": k_cache and v_cache differ in shape or dtype");
  FASTLM_CHECK_ARG(k_cache.size(1) == batch.block_size && k_cache.size(2) == num_kv_heads &&
                       k_cache.size(3) == head_dim,
                   op, ": cache ", k_cache.shape_str(), " must be [num_blocks, ", batch.block_size,
                   ", ", num_kv_heads, ", ", head_dim, "]");
  const int num_seqs = batch.num_seqs();
  FASTLM_CHECK_ARG(batch.block_size > 0, op, ": bad batch geometry");
  if (num_seqs == 0) {
    FASTLM_CHECK_ARG(t == 0, op, ": q has ", t, " rows but the batch has no sequences");
    return;
  }
  // Shapes only: block ids and lengths were validated where the batch was built
  // (ops/batch_checks.h), once per step rather than once per layer.
  check_dim(op, "query_start_loc", batch.query_start_loc, 1);
  check_dim(op, "seq_lens", batch.seq_lens, 1);
  check_dim(op, "block_tables", batch.block_tables, 2);
  check_dtype(op, "query_start_loc", batch.query_start_loc, DType::kI32);
  check_dtype(op, "seq_lens", batch.seq_lens, DType::kI32);
  check_dtype(op, "block_tables", batch.block_tables, DType::kI32);
  FASTLM_CHECK_ARG(
      batch.query_start_loc.size(0) == num_seqs + 1 && batch.block_tables.size(0) == num_seqs, op,
      ": query_start_loc ", batch.query_start_loc.shape_str(), " / block_tables ",
      batch.block_tables.shape_str(), " do not match ", num_seqs, " sequences");
  check_device(
      ctx, op,
      {&q, &k_cache, &v_cache, &out, &batch.query_start_loc, &batch.seq_lens, &batch.block_tables});
  cpu::PagedAttentionArgs args;
  args.q = q.data<float>();
  args.k_cache = k_cache.data();
  args.v_cache = v_cache.data();
  args.out = out.data<float>();
  args.num_seqs = num_seqs;
  args.query_start_loc = batch.query_start_loc.data<int32_t>();
  args.seq_lens = batch.seq_lens.data<int32_t>();
  args.block_tables = batch.block_tables.data<int32_t>();
  args.max_blocks_per_seq = static_cast<int>(batch.block_tables.size(1));
  args.block_size = batch.block_size;
  args.num_q_heads = num_q_heads;
  args.num_kv_heads = num_kv_heads;
  args.head_dim = head_dim;
  args.scale = scale;
  args.sliding_window = sliding_window;
  dispatch(ctx, op, Axis<F32Only>{q.dtype(), "q"}, Axis<CacheTypes>{k_cache.dtype(), "cache"},
           [&](auto device, auto, auto ct) {
             if constexpr (is_cpu<decltype(device)>) {
               cpu::paged_attention<decltype(ct)::value>(args);
             } else {
               no_kernel(device, op);
             }
           });
}

}  // namespace fastlm::ops
