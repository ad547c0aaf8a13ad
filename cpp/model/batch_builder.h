#pragma once
// The one place a ForwardBatch is built from scheduled sequences (the engine's ModelRunner and
// the bindings' test harness both use it). Its buffers persist across steps: begin() clears
// them without freeing, so a steady-state step allocates nothing.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/status.h"
#include "model/model.h"

namespace fastlm::model {

class BatchBuilder {
 public:
  // Starts a step: block tables are padded to max_blocks_per_seq; with_token_types adds a
  // token type per token (cross-encoder pairs).
  void begin(int block_size, int max_blocks_per_seq, bool with_token_types) {
    FASTLM_ASSERT(block_size > 0 && max_blocks_per_seq > 0);
    block_size_ = block_size;
    with_token_types_ = with_token_types;
    ForwardBatch& b = batch_;
    b.token_ids.clear();
    b.positions.clear();
    b.slot_mapping.clear();
    b.query_start_loc.assign(1, 0);
    b.seq_lens.clear();
    b.block_tables.clear();
    b.logits_indices.clear();
    b.token_type_ids.clear();
    b.num_encoder_slots = 0;
    b.encoder_inputs.clear();
    b.max_blocks_per_seq = max_blocks_per_seq;
  }

  // Appends positions [start, start + n) of one sequence, whose context after this step is
  // start + n tokens held in `block_table` (at least ceil((start + n) / block_size) blocks).
  // token_at(pos) gives the token id at a position; tokens at positions >= token_type_boundary
  // get type 1 (boundary < 0: all 0). Returns the flat row of the sequence's first new token.
  template <typename TokenAt>
  int add_sequence(TokenAt&& token_at, int start, int n, const std::vector<int32_t>& block_table,
                   int token_type_boundary = -1) {
    ForwardBatch& b = batch_;
    FASTLM_ASSERT(static_cast<int>(block_table.size()) <= b.max_blocks_per_seq);
    FASTLM_ASSERT(static_cast<int64_t>(block_table.size()) * block_size_ >= start + n);
    const int row0 = b.num_tokens();
    for (int j = 0; j < n; ++j) {
      const int pos = start + j;
      b.token_ids.push_back(token_at(pos));
      b.positions.push_back(pos);
      const int32_t block = block_table[pos / block_size_];
      b.slot_mapping.push_back(static_cast<int64_t>(block) * block_size_ + pos % block_size_);
      if (with_token_types_) {
        b.token_type_ids.push_back(token_type_boundary >= 0 && pos >= token_type_boundary ? 1 : 0);
      }
    }
    b.query_start_loc.push_back(b.num_tokens());
    b.seq_lens.push_back(start + n);
    b.block_tables.insert(b.block_tables.end(), block_table.begin(), block_table.end());
    b.block_tables.resize(b.block_tables.size() + b.max_blocks_per_seq - block_table.size(), 0);
    return row0;
  }

  ForwardBatch& batch() { return batch_; }

 private:
  ForwardBatch batch_;
  int block_size_ = 16;
  bool with_token_types_ = false;
};

}  // namespace fastlm::model
