// BatchBuilder: the one construction of a ForwardBatch (InputBatch and the bindings): slot
// mapping through each sequence's block table, zero-padded persistent block-table rows appended
// in place, query offsets, context lengths, token types, logits rows, the one staging area and
// its reuse across steps (chunked prefill then decode), growth beyond the reserved sizes.
#include <gtest/gtest.h>

#include <vector>

#include "model/batch_builder.h"

namespace fastlm::model {
namespace {

TEST(BatchBuilder, BuildsSlotsOffsetsAndPaddedTables) {
  BatchBuilder builder;
  const std::vector<int32_t> seq_a{10, 11, 12, 13, 14, 15};
  const std::vector<int32_t> seq_b{20, 21, 22};
  const std::vector<int32_t> table_a{7, 2};  // block size 4: positions 0-3 -> 7, 4-5 -> 2
  const std::vector<int32_t> table_b{5};
  // Step 1: a's first chunk (positions 0..4) and all of b.
  builder.reserve(16, 2, 2);
  builder.begin(4, false);
  const int row_a = builder.add_sequence_with_table([&](int p) { return seq_a[p]; }, 0, 5, table_a);
  const int row_b = builder.add_sequence_with_table([&](int p) { return seq_b[p]; }, 0, 3, table_b);
  builder.add_logits_row(row_b + 2);
  builder.add_logits_row(row_a + 4);
  ForwardBatch& b = builder.finish();
  EXPECT_EQ(row_a, 0);
  EXPECT_EQ(row_b, 5);
  EXPECT_EQ(b.token_ids.to_vector(), (std::vector<int32_t>{10, 11, 12, 13, 14, 20, 21, 22}));
  EXPECT_EQ(b.positions.to_vector(), (std::vector<int32_t>{0, 1, 2, 3, 4, 0, 1, 2}));
  EXPECT_EQ(b.slot_mapping.to_vector(), (std::vector<int64_t>{28, 29, 30, 31, 8, 20, 21, 22}));
  EXPECT_EQ(b.query_start_loc.to_vector(), (std::vector<int32_t>{0, 5, 8}));
  EXPECT_EQ(b.seq_lens.to_vector(), (std::vector<int32_t>{5, 3}));
  EXPECT_EQ(b.block_tables.to_vector(),
            (std::vector<int32_t>{7, 2, 5, 0}));  // b's row padded with 0
  EXPECT_EQ(b.logits_indices.to_vector(), (std::vector<int32_t>{7, 4}));
  EXPECT_TRUE(b.token_type_ids.empty());
  // Every span lies in the one staging area, below staging_bytes.
  const auto* base = b.staging.data<uint8_t>();
  for (const void* p : {static_cast<const void*>(b.token_ids.data()),
                        static_cast<const void*>(b.slot_mapping.data()),
                        static_cast<const void*>(b.logits_indices.data()),
                        static_cast<const void*>(b.block_tables.end())}) {
    EXPECT_GE(static_cast<const uint8_t*>(p), base);
    EXPECT_LE(static_cast<const uint8_t*>(p), base + b.staging_bytes);
  }
  EXPECT_EQ(b.num_seqs(), 2);
  const auto* ids_storage = b.token_ids.data();

  // Step 2: a's last prompt token, as a chunk continuing at position 5; buffers are reused.
  builder.begin(4, false);
  builder.add_sequence_with_table([&](int p) { return seq_a[p]; }, 5, 1, table_a);
  builder.finish();
  EXPECT_EQ(b.token_ids.to_vector(), (std::vector<int32_t>{15}));
  EXPECT_EQ(b.positions.to_vector(), (std::vector<int32_t>{5}));
  EXPECT_EQ(b.slot_mapping.to_vector(), (std::vector<int64_t>{9}));
  EXPECT_EQ(b.query_start_loc.to_vector(), (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(b.seq_lens.to_vector(), (std::vector<int32_t>{6}));
  EXPECT_EQ(b.block_tables.to_vector(), (std::vector<int32_t>{7, 2}));
  EXPECT_EQ(b.token_ids.data(), ids_storage);  // no reallocation
}

TEST(BatchBuilder, TokenTypesFollowTheBoundary) {
  BatchBuilder builder;
  const std::vector<int32_t> pair{1, 2, 3, 4, 5};
  const std::vector<int32_t> single{9, 9};
  builder.begin(16, true);
  builder.add_sequence_with_table([&](int p) { return pair[p]; }, 0, 5, {0}, 3);
  builder.add_sequence_with_table([&](int p) { return single[p]; }, 0, 2, {1});
  EXPECT_EQ(builder.finish().token_type_ids.to_vector(),
            (std::vector<int32_t>{0, 0, 0, 1, 1, 0, 0}));
}

TEST(BatchBuilder, RefusesATableTooShortForTheContext) {
  BatchBuilder builder;
  const std::vector<int32_t> seq(9, 1);
  builder.begin(4, false);
  EXPECT_THROW(builder.add_sequence_with_table([&](int p) { return seq[p]; }, 0, 9, {0, 1}), Error);
}

TEST(BatchBuilder, RowsAppendMoveAndGrowInPlace) {
  BatchBuilder builder;
  builder.reserve(4, 1, 2);
  const std::vector<int32_t> first{3, 9};
  builder.set_blocks(0, first.data(), 2);
  const std::vector<int32_t> more{4, 5, 6};
  builder.append_blocks(0, more.data(), 3);  // beyond the reserved 2 blocks per row: grows
  EXPECT_EQ(builder.num_blocks(0), 5);
  EXPECT_GE(builder.max_blocks_per_seq(), 5);
  const std::vector<int32_t> other{1};
  builder.set_blocks(1, other.data(), 1);  // beyond the reserved 1 sequence: grows
  EXPECT_EQ(std::vector<int32_t>(builder.blocks(0), builder.blocks(0) + 5),
            (std::vector<int32_t>{3, 9, 4, 5, 6}));
  builder.move_row(1, 0);
  EXPECT_EQ(builder.num_blocks(0), 1);
  EXPECT_EQ(builder.num_blocks(1), 0);
  EXPECT_EQ(builder.blocks(0)[0], 1);
  EXPECT_EQ(builder.blocks(0)[1], 0);  // the longer table it replaced reads 0
  // More tokens than reserved: the staging area grows, entries written before survive.
  const std::vector<int32_t> seq(20, 7);
  builder.begin(4, false);
  builder.add_sequence([&](int p) { return seq[p]; }, 0, 3);
  const std::vector<int32_t> big{10, 11, 12, 13, 14};
  builder.set_blocks(1, big.data(), 5);
  builder.add_sequence([&](int p) { return seq[p] + p; }, 0, 20);
  ForwardBatch& b = builder.finish();
  EXPECT_EQ(b.num_tokens(), 23);
  EXPECT_EQ(b.query_start_loc.to_vector(), (std::vector<int32_t>{0, 3, 23}));
  EXPECT_EQ(b.slot_mapping[0], 4);
  EXPECT_EQ(b.slot_mapping[22], 14 * 4 + 3);
  EXPECT_EQ(b.token_ids[22], 7 + 19);
}

}  // namespace
}  // namespace fastlm::model
