#include "ops/batch_checks.h"

#include "core/status.h"
#include "ops/op_checks.h"

namespace fastlm::ops {
namespace {

void check_host_index(const char* what, const Tensor& t, DType dtype) {
  detail::check_dim(what, what, t, 1);
  detail::check_dtype(what, what, t, dtype);
  FASTLM_CHECK_ARG(t.device() == Device::kCPU, what, " must be validated on the host");
}

}  // namespace

void check_token_ids(const Tensor& ids, int64_t vocab) {
  check_host_index("token ids", ids, DType::kI32);
  const int32_t* p = ids.data<int32_t>();
  for (int64_t i = 0; i < ids.numel(); ++i) {
    FASTLM_CHECK_ARG(p[i] >= 0 && p[i] < vocab, "token id ", p[i], " outside the vocabulary of ",
                     vocab);
  }
}

void check_positions(const Tensor& positions, int64_t max_pos) {
  check_host_index("positions", positions, DType::kI32);
  const int32_t* p = positions.data<int32_t>();
  for (int64_t i = 0; i < positions.numel(); ++i) {
    FASTLM_CHECK_ARG(p[i] >= 0 && p[i] < max_pos, "position ", p[i],
                     " outside the cos/sin cache of ", max_pos, " positions");
  }
}

void check_slot_mapping(const Tensor& slot_mapping, int64_t num_slots) {
  check_host_index("slot_mapping", slot_mapping, DType::kI64);
  const int64_t* p = slot_mapping.data<int64_t>();
  for (int64_t i = 0; i < slot_mapping.numel(); ++i) {
    FASTLM_CHECK_ARG(p[i] < num_slots, "KV slot ", p[i], " outside the cache of ", num_slots,
                     " slots");
  }
}

void check_query_start_loc(const Tensor& query_start_loc, int64_t num_tokens) {
  check_host_index("query_start_loc", query_start_loc, DType::kI32);
  const int32_t* q = query_start_loc.data<int32_t>();
  const int64_t n = query_start_loc.numel();
  FASTLM_CHECK_ARG(n >= 1 && q[0] == 0 && q[n - 1] == num_tokens,
                   "query_start_loc must run from 0 to ", num_tokens);
  for (int64_t s = 0; s + 1 < n; ++s) {
    FASTLM_CHECK_ARG(q[s + 1] >= q[s], "query_start_loc must be non-decreasing");
  }
}

void check_attention_batch(const AttentionBatch& batch, int64_t num_tokens, int64_t num_blocks) {
  const int num_seqs = batch.num_seqs();
  check_query_start_loc(batch.query_start_loc, num_tokens);
  check_host_index("seq_lens", batch.seq_lens, DType::kI32);
  FASTLM_CHECK_ARG(batch.query_start_loc.numel() == num_seqs + 1, "query_start_loc has ",
                   batch.query_start_loc.numel(), " entries for ", num_seqs, " sequences");
  FASTLM_CHECK_ARG(batch.block_size > 0, "block_size must be positive");
  detail::check_dim("block_tables", "block_tables", batch.block_tables, 2);
  detail::check_dtype("block_tables", "block_tables", batch.block_tables, DType::kI32);
  FASTLM_CHECK_ARG(batch.block_tables.size(0) == num_seqs, "block_tables ",
                   batch.block_tables.shape_str(), " must have one row per sequence (", num_seqs,
                   ")");
  const int64_t max_blocks = batch.block_tables.size(1);
  const int32_t* qsl = batch.query_start_loc.data<int32_t>();
  const int32_t* lens = batch.seq_lens.data<int32_t>();
  const int32_t* tables = batch.block_tables.data<int32_t>();
  for (int s = 0; s < num_seqs; ++s) {
    const int q_len = qsl[s + 1] - qsl[s];
    const int ctx = lens[s];
    FASTLM_CHECK_ARG(ctx >= q_len, "sequence ", s, " has ", q_len, " queries but context length ",
                     ctx);
    const int64_t blocks = (static_cast<int64_t>(ctx) + batch.block_size - 1) / batch.block_size;
    FASTLM_CHECK_ARG(q_len == 0 || blocks <= max_blocks, "sequence ", s, " needs ", blocks,
                     " blocks, the table holds ", max_blocks);
    const int32_t* table = tables + static_cast<int64_t>(s) * max_blocks;
    for (int64_t b = 0; q_len > 0 && b < blocks; ++b) {
      FASTLM_CHECK_ARG(table[b] >= 0 && table[b] < num_blocks, "sequence ", s, " block ", b, " id ",
                       table[b], " outside the cache of ", num_blocks, " blocks");
    }
  }
}

}  // namespace fastlm::ops
