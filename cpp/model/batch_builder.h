#pragma once
// The one place a ForwardBatch is built (the engine's InputBatch / ModelRunner and the bindings).
// Every index array of a step lives in one host staging area, so a device backend uploads a
// step's indices with one copy:
//
//   staging: | qsl | seq_lens | token_ids | positions | token_types | logits_indices |
//            | slot_mapping (int64) | block_tables [max_seqs x max_blocks_per_seq] |
//             <-------------- per step, rewritten by begin()/add_* ---------------->
//                                          <-- persistent rows, appended in place -->
//   (each segment 64-byte aligned; a step's bytes are [0, end of its last block-table row))
//
// Block-table rows persist across steps: row r is the table of the r-th sequence added after
// begin(); the owner of the rows (InputBatch) appends newly allocated blocks to a row and moves
// rows when requests leave, instead of re-padding every table every step. Capacities grow on
// demand (reserve() them up front and a steady-state step allocates nothing).
#include <cstdint>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "model/model.h"

namespace fastlm::model {

class BatchBuilder {
 public:
  // Grows the staging area to hold max_tokens tokens and max_seqs sequences of at most
  // max_blocks_per_seq blocks per step (never shrinks; keeps the persistent rows).
  void reserve(int max_tokens, int max_seqs, int max_blocks_per_seq);

  // Persistent block-table rows.
  int num_blocks(int row) const { return row < num_rows() ? row_blocks_[row] : 0; }
  const int32_t* blocks(int row) const { return block_table_ptr() + int64_t{row} * stride_; }
  // Replaces row's table with blocks[0, n) (the rest of the row reads 0).
  void set_blocks(int row, const int32_t* blocks, int n);
  // Appends blocks[0, n) to row's table.
  void append_blocks(int row, const int32_t* blocks, int n);
  // Moves row `from`'s table to row `to` (condensing after a request left); `from` is emptied.
  void move_row(int from, int to);
  int num_rows() const { return static_cast<int>(row_blocks_.size()); }

  // Starts a step; with_token_types adds a token type per token (cross-encoder pairs).
  void begin(int block_size, bool with_token_types);

  // Appends positions [start, start + n) of the sequence whose block table is row num_seqs()
  // (at least ceil((start + n) / block_size) blocks), context start + n after this step.
  // token_at(pos) gives the token id at a position; tokens at positions >= token_type_boundary
  // get type 1 (boundary < 0: all 0). Returns the flat row of the sequence's first new token.
  template <typename TokenAt>
  int add_sequence(TokenAt&& token_at, int start, int n, int token_type_boundary = -1) {
    const int s = num_seqs_;
    FASTLM_ASSERT(s < num_rows() && n >= 0 && start >= 0);
    FASTLM_ASSERT(int64_t{row_blocks_[s]} * block_size_ >= int64_t{start} + n);
    if (num_tokens_ + n > cap_tokens_ || s + 1 > cap_seqs_) {
      reserve(std::max(num_tokens_ + n, 2 * cap_tokens_), std::max(s + 1, cap_seqs_), stride_);
    }
    const int row0 = num_tokens_;
    int32_t* ids = seg<int32_t>(kTokenIds) + row0;
    int32_t* pos = seg<int32_t>(kPositions) + row0;
    int64_t* slots = seg<int64_t>(kSlotMapping) + row0;
    const int32_t* table = blocks(s);
    for (int j = 0; j < n; ++j) {
      const int p = start + j;
      ids[j] = token_at(p);
      pos[j] = p;
      slots[j] = int64_t{table[p / block_size_]} * block_size_ + p % block_size_;
    }
    if (with_token_types_) {
      int32_t* types = seg<int32_t>(kTokenTypes) + row0;
      for (int j = 0; j < n; ++j) {
        types[j] = token_type_boundary >= 0 && start + j >= token_type_boundary ? 1 : 0;
      }
    }
    num_tokens_ += n;
    seg<int32_t>(kQueryStartLoc)[s + 1] = num_tokens_;
    seg<int32_t>(kSeqLens)[s] = start + n;
    num_seqs_ = s + 1;
    return row0;
  }

  // The same with the sequence's block table given whole (sets row num_seqs() first): for
  // callers without persistent rows (the bindings' test harness).
  template <typename TokenAt>
  int add_sequence_with_table(TokenAt&& token_at, int start, int n,
                              const std::vector<int32_t>& block_table,
                              int token_type_boundary = -1) {
    set_blocks(num_seqs_, block_table.data(), static_cast<int>(block_table.size()));
    return add_sequence(token_at, start, n, token_type_boundary);
  }

  // Asks for the logits of flat row `row` (rows come out in the order asked).
  void add_logits_row(int32_t row);

  // The step's batch, its spans pointing into the staging area; valid until the next begin(),
  // add_*, reserve() or row change. encoder fields may be set on it directly.
  ForwardBatch& finish();
  ForwardBatch& batch() { return batch_; }

  int num_seqs() const { return num_seqs_; }
  int num_tokens() const { return num_tokens_; }
  int num_logits() const { return num_logits_; }
  int max_blocks_per_seq() const { return stride_; }

 private:
  enum Segment : int {
    kQueryStartLoc,
    kSeqLens,
    kTokenIds,
    kPositions,
    kTokenTypes,
    kLogitsIndices,
    kSlotMapping,
    kBlockTables,
    kNumSegments
  };
  template <typename T>
  T* seg(Segment s) const {
    return reinterpret_cast<T*>(staging_.data<uint8_t>() + offset_[s]);
  }
  int32_t* block_table_ptr() const { return seg<int32_t>(kBlockTables); }
  void ensure_row(int row, int blocks);

  Tensor staging_;
  size_t offset_[kNumSegments] = {};
  int cap_tokens_ = 0, cap_seqs_ = 0, stride_ = 0;
  std::vector<int> row_blocks_;  // blocks held by each persistent row
  int block_size_ = 16;
  bool with_token_types_ = false;
  int num_tokens_ = 0, num_seqs_ = 0, num_logits_ = 0;
  ForwardBatch batch_;
};

}  // namespace fastlm::model
