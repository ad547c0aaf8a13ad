#include "model/batch_builder.h"

#include <algorithm>
#include <cstring>

namespace fastlm::model {

namespace {
size_t align64(size_t n) { return (n + 63) / 64 * 64; }
}  // namespace

void BatchBuilder::reserve(int max_tokens, int max_seqs, int max_blocks_per_seq) {
  const int tokens = std::max(max_tokens, cap_tokens_);
  const int seqs = std::max({max_seqs, cap_seqs_, num_rows()});
  const int stride = std::max(max_blocks_per_seq, stride_);
  if (staging_.defined() && tokens == cap_tokens_ && seqs == cap_seqs_ && stride == stride_) return;
  size_t off[kNumSegments];
  size_t at = 0;
  auto place = [&](Segment s, size_t bytes) {
    off[s] = at;
    at += align64(bytes);
  };
  place(kQueryStartLoc, (seqs + 1) * sizeof(int32_t));
  place(kSeqLens, seqs * sizeof(int32_t));
  place(kTokenIds, tokens * sizeof(int32_t));
  place(kPositions, tokens * sizeof(int32_t));
  place(kTokenTypes, tokens * sizeof(int32_t));
  place(kLogitsIndices, (tokens + seqs) * sizeof(int32_t));
  place(kSlotMapping, tokens * sizeof(int64_t));
  place(kBlockTables, size_t{static_cast<size_t>(seqs)} * stride * sizeof(int32_t));
  Tensor next = Tensor::zeros({static_cast<int64_t>(std::max<size_t>(at, 64))}, DType::kU8);
  if (staging_.defined()) {  // keep this step's entries and the persistent rows
    uint8_t* dst = next.data<uint8_t>();
    const uint8_t* src = staging_.data<uint8_t>();
    auto keep = [&](Segment s, size_t bytes) {
      std::memcpy(dst + off[s], src + offset_[s], bytes);
    };
    keep(kQueryStartLoc, (num_seqs_ + 1) * sizeof(int32_t));
    keep(kSeqLens, num_seqs_ * sizeof(int32_t));
    keep(kTokenIds, num_tokens_ * sizeof(int32_t));
    keep(kPositions, num_tokens_ * sizeof(int32_t));
    keep(kTokenTypes, num_tokens_ * sizeof(int32_t));
    keep(kLogitsIndices, num_logits_ * sizeof(int32_t));
    keep(kSlotMapping, num_tokens_ * sizeof(int64_t));
    for (int r = 0; r < num_rows(); ++r) {
      std::memcpy(dst + off[kBlockTables] + size_t{static_cast<size_t>(r)} * stride * 4,
                  src + offset_[kBlockTables] + size_t{static_cast<size_t>(r)} * stride_ * 4,
                  row_blocks_[r] * sizeof(int32_t));
    }
  }
  staging_ = std::move(next);
  std::copy(off, off + kNumSegments, offset_);
  cap_tokens_ = tokens;
  cap_seqs_ = seqs;
  stride_ = stride;
}

void BatchBuilder::ensure_row(int row, int blocks) {
  FASTLM_ASSERT(row >= 0 && blocks >= 0);
  if (row >= cap_seqs_ || blocks > stride_) {
    reserve(cap_tokens_, std::max(row + 1, row >= cap_seqs_ ? 2 * cap_seqs_ : cap_seqs_),
            blocks > stride_ ? std::max(blocks, 2 * stride_) : stride_);
  }
  if (row >= num_rows()) row_blocks_.resize(row + 1, 0);
}

void BatchBuilder::set_blocks(int row, const int32_t* blocks, int n) {
  ensure_row(row, n);
  int32_t* dst = block_table_ptr() + int64_t{row} * stride_;
  std::copy(blocks, blocks + n, dst);
  // Zero the rest of what the row held before (padding reads 0, as the bindings expect).
  if (row_blocks_[row] > n) std::fill(dst + n, dst + row_blocks_[row], 0);
  row_blocks_[row] = n;
}

void BatchBuilder::append_blocks(int row, const int32_t* blocks, int n) {
  FASTLM_ASSERT(row < num_rows());
  const int have = row_blocks_[row];
  ensure_row(row, have + n);
  std::copy(blocks, blocks + n, block_table_ptr() + int64_t{row} * stride_ + have);
  row_blocks_[row] = have + n;
}

void BatchBuilder::move_row(int from, int to) {
  FASTLM_ASSERT(from < num_rows() && to < num_rows() && from != to);
  int32_t* base = block_table_ptr();
  std::copy(base + int64_t{from} * stride_, base + int64_t{from} * stride_ + row_blocks_[from],
            base + int64_t{to} * stride_);
  if (row_blocks_[to] > row_blocks_[from]) {
    std::fill(base + int64_t{to} * stride_ + row_blocks_[from],
              base + int64_t{to} * stride_ + row_blocks_[to], 0);
  }
  row_blocks_[to] = row_blocks_[from];
  std::fill(base + int64_t{from} * stride_, base + int64_t{from} * stride_ + row_blocks_[from], 0);
  row_blocks_[from] = 0;
}

void BatchBuilder::begin(int block_size, bool with_token_types) {
  FASTLM_ASSERT(block_size > 0);
  if (!staging_.defined()) reserve(1, 1, 1);
  block_size_ = block_size;
  with_token_types_ = with_token_types;
  num_tokens_ = num_seqs_ = num_logits_ = 0;
  seg<int32_t>(kQueryStartLoc)[0] = 0;
  batch_.num_encoder_slots = 0;
  batch_.encoder_inputs.clear();
}

void BatchBuilder::add_logits_row(int32_t row) {
  FASTLM_ASSERT(row >= 0 && row < num_tokens_);
  if (num_logits_ + 1 > cap_tokens_ + cap_seqs_) reserve(2 * cap_tokens_, cap_seqs_, stride_);
  seg<int32_t>(kLogitsIndices)[num_logits_++] = row;
}

ForwardBatch& BatchBuilder::finish() {
  ForwardBatch& b = batch_;
  const size_t T = num_tokens_, S = num_seqs_;
  b.token_ids = {seg<int32_t>(kTokenIds), T};
  b.positions = {seg<int32_t>(kPositions), T};
  b.slot_mapping = {seg<int64_t>(kSlotMapping), T};
  b.query_start_loc = {seg<int32_t>(kQueryStartLoc), S + 1};
  b.seq_lens = {seg<int32_t>(kSeqLens), S};
  b.block_tables = {block_table_ptr(), S * stride_};
  b.max_blocks_per_seq = stride_;
  b.logits_indices = {seg<int32_t>(kLogitsIndices), static_cast<size_t>(num_logits_)};
  b.token_type_ids = {seg<int32_t>(kTokenTypes), with_token_types_ ? T : 0};
  b.staging = staging_;
  b.staging_bytes = offset_[kBlockTables] + S * stride_ * sizeof(int32_t);
  return b;
}

}  // namespace fastlm::model
