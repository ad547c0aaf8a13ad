// RequestOutputDelta::merge: when Python polls late, the deltas of one request queued since its
// last poll merge into one, which must read as if they had been delivered one by one: tokens and
// their logprobs appended in order and kept paired, prompt logprobs (sent once) kept, the finish
// and error of the last delta, a pooled vector carried.
#include <gtest/gtest.h>

#include <vector>

#include "engine/output.h"

namespace fastlm::engine {
namespace {

TokenLogprobs lp(int32_t token, float logprob, int rank) {
  TokenLogprobs t;
  t.token = token;
  t.logprob = logprob;
  t.rank = rank;
  t.top = {{token, logprob}, {token + 1, logprob - 1.0f}};
  return t;
}

RequestOutputDelta delta(std::vector<int32_t> tokens, int num_cached = 0) {
  RequestOutputDelta d;
  d.request_id = "r";
  d.new_token_ids = tokens;
  for (int32_t t : tokens) d.logprobs.push_back(lp(t, -0.5f * t, 1 + t % 3));
  d.num_prompt_tokens = 4;
  d.num_cached_tokens = num_cached;
  return d;
}

TEST(OutputDelta, MergesTokensLogprobsAndPromptLogprobsInOrder) {
  RequestOutputDelta first = delta({5});
  first.prompt_logprobs = {lp(11, -1.0f, 1), lp(12, -2.0f, 2), lp(13, -3.0f, 3)};
  RequestOutputDelta second = delta({6, 7}, /*num_cached=*/0);
  RequestOutputDelta last = delta({8});
  last.finished = true;
  last.finish_reason = "length";
  first.merge(std::move(second));
  first.merge(std::move(last));

  EXPECT_EQ(first.new_token_ids, (std::vector<int32_t>{5, 6, 7, 8}));
  ASSERT_EQ(first.logprobs.size(), first.new_token_ids.size());
  for (size_t i = 0; i < first.logprobs.size(); ++i) {
    const int32_t t = first.new_token_ids[i];
    EXPECT_EQ(first.logprobs[i].token, t);
    EXPECT_FLOAT_EQ(first.logprobs[i].logprob, -0.5f * t);
    EXPECT_EQ(first.logprobs[i].rank, 1 + t % 3);
    ASSERT_EQ(first.logprobs[i].top.size(), 2u);
    EXPECT_EQ(first.logprobs[i].top[1].first, t + 1);
  }
  // Delivered once, with the first delta; later deltas (empty) do not erase them.
  ASSERT_EQ(first.prompt_logprobs.size(), 3u);
  EXPECT_EQ(first.prompt_logprobs[2].token, 13);
  EXPECT_TRUE(first.finished);
  EXPECT_EQ(first.finish_reason, "length");
  EXPECT_EQ(first.num_prompt_tokens, 4);
}

TEST(OutputDelta, PromptLogprobsArrivingInALaterDeltaAreKept) {
  // A chunked prompt: the first deltas carry nothing; the prompt logprobs come with the delta
  // of the step that finished the prompt, together with the first token.
  RequestOutputDelta early;
  early.request_id = "r";
  early.num_cached_tokens = 16;
  RequestOutputDelta done = delta({9}, /*num_cached=*/16);
  done.prompt_logprobs = {lp(1, -0.1f, 1)};
  RequestOutputDelta failed;
  failed.request_id = "r";
  failed.finished = true;
  failed.finish_reason = "abort";
  failed.error = "the grammar mask for output token 1 did not arrive within 10 ms";
  failed.num_prompt_tokens = 4;
  failed.num_cached_tokens = 16;
  early.merge(std::move(done));
  early.merge(std::move(failed));
  EXPECT_EQ(early.new_token_ids, (std::vector<int32_t>{9}));
  ASSERT_EQ(early.logprobs.size(), 1u);
  ASSERT_EQ(early.prompt_logprobs.size(), 1u);
  EXPECT_EQ(early.prompt_logprobs[0].token, 1);
  EXPECT_EQ(early.finish_reason, "abort");
  EXPECT_FALSE(early.error.empty());
  EXPECT_EQ(early.num_cached_tokens, 16);
}

TEST(OutputDelta, PooledVectorIsCarried) {
  RequestOutputDelta a;
  a.request_id = "r";
  RequestOutputDelta b;
  b.request_id = "r";
  b.finished = true;
  b.finish_reason = "stop";
  b.pooled = {0.5f, -0.5f};
  b.pooled_shape = {2};
  a.merge(std::move(b));
  EXPECT_EQ(a.pooled, (std::vector<float>{0.5f, -0.5f}));
  EXPECT_EQ(a.pooled_shape, (std::vector<int64_t>{2}));
}

}  // namespace
}  // namespace fastlm::engine
