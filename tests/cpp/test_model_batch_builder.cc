// BatchBuilder: the one construction of a ForwardBatch (ModelRunner and the bindings): slot
// mapping through each sequence's block table, padded block-table rows, query offsets, context
// lengths, token types, and buffers reused across steps (chunked prefill then decode).
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
  builder.begin(4, 2, false);
  const int row_a = builder.add_sequence([&](int p) { return seq_a[p]; }, 0, 5, table_a);
  const int row_b = builder.add_sequence([&](int p) { return seq_b[p]; }, 0, 3, table_b);
  ForwardBatch& b = builder.batch();
  EXPECT_EQ(row_a, 0);
  EXPECT_EQ(row_b, 5);
  EXPECT_EQ(b.token_ids, (std::vector<int32_t>{10, 11, 12, 13, 14, 20, 21, 22}));
  EXPECT_EQ(b.positions, (std::vector<int32_t>{0, 1, 2, 3, 4, 0, 1, 2}));
  EXPECT_EQ(b.slot_mapping, (std::vector<int64_t>{28, 29, 30, 31, 8, 20, 21, 22}));
  EXPECT_EQ(b.query_start_loc, (std::vector<int32_t>{0, 5, 8}));
  EXPECT_EQ(b.seq_lens, (std::vector<int32_t>{5, 3}));
  EXPECT_EQ(b.block_tables, (std::vector<int32_t>{7, 2, 5, 0}));  // b's row padded with 0
  EXPECT_TRUE(b.token_type_ids.empty());
  EXPECT_EQ(b.num_seqs(), 2);
  const auto* ids_storage = b.token_ids.data();

  // Step 2: a's last prompt token, as a chunk continuing at position 5; buffers are reused.
  builder.begin(4, 2, false);
  builder.add_sequence([&](int p) { return seq_a[p]; }, 5, 1, table_a);
  EXPECT_EQ(b.token_ids, (std::vector<int32_t>{15}));
  EXPECT_EQ(b.positions, (std::vector<int32_t>{5}));
  EXPECT_EQ(b.slot_mapping, (std::vector<int64_t>{9}));
  EXPECT_EQ(b.query_start_loc, (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(b.seq_lens, (std::vector<int32_t>{6}));
  EXPECT_EQ(b.block_tables, (std::vector<int32_t>{7, 2}));
  EXPECT_EQ(b.token_ids.data(), ids_storage);  // no reallocation
}

TEST(BatchBuilder, TokenTypesFollowTheBoundary) {
  BatchBuilder builder;
  const std::vector<int32_t> pair{1, 2, 3, 4, 5};
  const std::vector<int32_t> single{9, 9};
  builder.begin(16, 1, true);
  builder.add_sequence([&](int p) { return pair[p]; }, 0, 5, {0}, 3);
  builder.add_sequence([&](int p) { return single[p]; }, 0, 2, {1});
  EXPECT_EQ(builder.batch().token_type_ids, (std::vector<int32_t>{0, 0, 0, 1, 1, 0, 0}));
}

TEST(BatchBuilder, RefusesATableTooShortForTheContext) {
  BatchBuilder builder;
  const std::vector<int32_t> seq(9, 1);
  builder.begin(4, 2, false);
  EXPECT_THROW(builder.add_sequence([&](int p) { return seq[p]; }, 0, 9, {0, 1}), Error);
}

}  // namespace
}  // namespace fastlm::model
