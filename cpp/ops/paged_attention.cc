#include "cpu/paged_attention_cpu.h"
#include "ops/op_checks.h"
#include "ops/ops.h"

namespace fastlm::ops {

void paged_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                     const AttentionBatch& batch, int num_q_heads, int num_kv_heads, int head_dim,
                     float scale, int sliding_window, Tensor& out) {
  using namespace detail;
  const char* op = "paged_attention";
  check_dim(op, "q", q, 2);
  check_dim(op, "out", out, 2);
  check_dim(op, "k_cache", k_cache, 4);
  check_dim(op, "v_cache", v_cache, 4);
  check_dtype(op, "q", q, DType::kF32);
  check_dtype(op, "out", out, DType::kF32);
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
  const int64_t num_blocks = k_cache.size(0);
  FASTLM_CHECK_ARG(k_cache.size(1) == batch.block_size && k_cache.size(2) == num_kv_heads &&
                       k_cache.size(3) == head_dim,
                   op, ": cache ", k_cache.shape_str(), " must be [num_blocks, ", batch.block_size,
                   ", ", num_kv_heads, ", ", head_dim, "]");
  FASTLM_CHECK_ARG(batch.num_seqs >= 0 && batch.block_size > 0, op, ": bad batch geometry");
  if (batch.num_seqs > 0) {
    FASTLM_CHECK_ARG(batch.query_start_loc && batch.seq_lens && batch.block_tables, op,
                     ": batch arrays are null");
    FASTLM_CHECK_ARG(batch.query_start_loc[0] == 0 && batch.query_start_loc[batch.num_seqs] == t,
                     op, ": query_start_loc must run from 0 to T = ", t);
  } else {
    FASTLM_CHECK_ARG(t == 0, op, ": q has ", t, " rows but the batch has no sequences");
  }
  // Cheap next to the attention itself, and a bad block id would read out of bounds.
  for (int s = 0; s < batch.num_seqs; ++s) {
    const int q_len = batch.query_start_loc[s + 1] - batch.query_start_loc[s];
    const int ctx = batch.seq_lens[s];
    FASTLM_CHECK_ARG(q_len >= 0 && ctx >= q_len, op, ": sequence ", s, " has ", q_len,
                     " queries but context length ", ctx);
    const int64_t blocks = (static_cast<int64_t>(ctx) + batch.block_size - 1) / batch.block_size;
    FASTLM_CHECK_ARG(q_len == 0 || blocks <= batch.max_blocks_per_seq, op, ": sequence ", s,
                     " needs ", blocks, " blocks, the table holds ", batch.max_blocks_per_seq);
    const int32_t* table = batch.block_tables + static_cast<int64_t>(s) * batch.max_blocks_per_seq;
    for (int64_t b = 0; q_len > 0 && b < blocks; ++b) {
      FASTLM_CHECK_ARG(table[b] >= 0 && table[b] < num_blocks, op, ": sequence ", s, " block ", b,
                       " id ", table[b], " outside the cache of ", num_blocks, " blocks");
    }
  }
  cpu::PagedAttentionArgs args;
  args.q = q.data<float>();
  args.k_cache = k_cache.data();
  args.v_cache = v_cache.data();
  args.out = out.data<float>();
  args.num_seqs = batch.num_seqs;
  args.query_start_loc = batch.query_start_loc;
  args.seq_lens = batch.seq_lens;
  args.block_tables = batch.block_tables;
  args.max_blocks_per_seq = batch.max_blocks_per_seq;
  args.block_size = batch.block_size;
  args.num_q_heads = num_q_heads;
  args.num_kv_heads = num_kv_heads;
  args.head_dim = head_dim;
  args.scale = scale;
  args.sliding_window = sliding_window;
  switch (common_device(op, {&q, &k_cache, &v_cache, &out})) {
    case Device::kCPU:
      switch (k_cache.dtype()) {
        case DType::kF32:
          return cpu::paged_attention<DType::kF32>(args);
        case DType::kBF16:
          return cpu::paged_attention<DType::kBF16>(args);
        case DType::kF16:
        case DType::kI32:
        case DType::kI64:
        case DType::kU8:
          throw InvalidArgument(std::string(op) + ": cache must be float32 or bfloat16, got " +
                                dtype_name(k_cache.dtype()));
      }
      break;
    case Device::kCUDA:
      no_cuda(op);
  }
}

}  // namespace fastlm::ops
