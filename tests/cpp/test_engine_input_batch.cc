// InputBatch driven by the real Scheduler (no model): every step's ForwardBatch is checked
// against the scheduler output it came from (tokens, positions, slot mapping through the block
// table, query offsets, context lengths, block-table rows, logits rows), across chunked prefill,
// preemption and recomputation, requests leaving and joining; prompt-logprob rows score every
// prompt token exactly once; kept rows' tables grow by appending; each request's generator
// (held by its row, ops::sample advancing it) draws exactly once per sampled token, whatever
// the preemptions and row moves, and a request id used again starts from its own new state.
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "engine/input_batch.h"
#include "ops/backend.h"
#include "ops/sample.h"
#include "sched/scheduler.h"

namespace fastlm::engine {
namespace {

using Ids = std::vector<int32_t>;

struct Harness {
  explicit Harness(sched::SchedulerConfig c)
      : config(c),
        scheduler(c),
        input(c.block_size, c.max_num_batched_tokens, c.max_num_seqs, c.max_model_len) {}

  void add(const std::string& id, int prompt_len, int max_tokens, int prompt_logprobs = -1) {
    auto r = std::make_unique<sched::Request>();
    r->request_id = id;
    r->prompt_token_ids.resize(prompt_len);
    std::iota(r->prompt_token_ids.begin(), r->prompt_token_ids.end(), 100 * (1 + id[0] - 'a'));
    r->params.max_tokens = max_tokens;
    r->params.prompt_logprobs = prompt_logprobs;  // temperature 1: every row draws
    states[id] = RequestState{};
    states[id].rng = RandomState{seed_of(id), 0};
    scheduler.add_request(std::move(r));
  }

  // One step: update the batch, check it against the schedule, play the sampler.
  void step() {
    sched::SchedulerOutput out = scheduler.schedule();
    num_preempted += static_cast<int>(out.preempted_ids.size());
    const model::ForwardBatch& b = input.update(out, states);
    check(out, b);
    // The runner's sampling, on uniform logits: advances the sampling rows' generators.
    constexpr int kVocab = 16;
    SamplingBatch& sb = input.sampling(out, states, kVocab, {});
    std::vector<float> logits(static_cast<size_t>(sb.rows()) * kVocab, 0.0f);
    Tensor view = Tensor::view(logits.data(), {sb.rows(), kVocab}, DType::kF32);
    ops::sample(ops::default_context(Device::kCPU), view, sb.tensors(), sb.outputs());
    input.commit_sampling(out, states);
    std::vector<Ids> sampled(out.scheduled.size());
    for (size_t i = 0; i < out.scheduled.size(); ++i) {
      const sched::ScheduledRequest& s = out.scheduled[i];
      if (!s.samples) {
        ++num_partial_chunks;
        continue;
      }
      sampled[i].push_back(7000 + s.request->num_output_tokens());
    }
    for (const sched::RequestDelta& d : scheduler.update_from_output(out, sampled)) {
      if (d.finish_reason) finished.insert(d.request_id);
    }
  }

  void check(const sched::SchedulerOutput& out, const model::ForwardBatch& b) {
    const int n = static_cast<int>(out.scheduled.size());
    const int bs = config.block_size;
    ASSERT_EQ(b.num_seqs(), n);
    ASSERT_EQ(input.num_rows(), n);
    ASSERT_EQ(b.num_tokens(), out.total_num_tokens);
    std::set<int> rows;
    int sampling = 0;
    for (int i = 0; i < n; ++i) {
      const sched::ScheduledRequest& s = out.scheduled[i];
      const sched::Request& r = *s.request;
      const int row = input.row_of(i);
      ASSERT_TRUE(rows.insert(row).second);
      const int first = b.query_start_loc[row];
      ASSERT_EQ(b.query_start_loc[row + 1] - first, s.num_tokens);
      ASSERT_EQ(b.seq_lens[row], s.num_computed_before + s.num_tokens);
      const Ids& table = *s.block_table;
      const int32_t* persisted = b.block_tables.data() + int64_t{row} * b.max_blocks_per_seq;
      ASSERT_EQ(Ids(persisted, persisted + table.size()), table) << r.request_id;
      for (int j = 0; j < s.num_tokens; ++j) {
        const int pos = s.num_computed_before + j;
        ASSERT_EQ(b.token_ids[first + j], r.token_at(pos));
        ASSERT_EQ(b.positions[first + j], pos);
        ASSERT_EQ(b.slot_mapping[first + j], int64_t{table[pos / bs]} * bs + pos % bs);
      }
      // A kept row grows by appending; a new or recomputed row starts from its table.
      auto prev = last_table.find(r.request_id);
      if (prev != last_table.end() && prev->second.second == r.num_preemptions) {
        ASSERT_EQ(Ids(table.begin(), table.begin() + prev->second.first.size()),
                  prev->second.first);
      }
      last_table[r.request_id] = {table, r.num_preemptions};
      if (s.samples) ++sampling;
    }
    // Sampling rows first (the last scheduled token of each sampling request), in row order.
    ASSERT_EQ(static_cast<int>(input.sample_sched().size()), sampling);
    int prev_row = -1;
    for (size_t k = 0; k < input.sample_sched().size(); ++k) {
      const int i = input.sample_sched()[k];
      const int row = input.row_of(i);
      ASSERT_GT(row, prev_row);
      prev_row = row;
      ASSERT_EQ(b.logits_indices[k], b.query_start_loc[row + 1] - 1);
    }
    // Then prompt-logprob rows: the next unscored prompt positions, each once.
    int next_logits_row = sampling;
    for (const PromptLogprobRows& pr : input.prompt_rows()) {
      const sched::ScheduledRequest& s = out.scheduled[pr.sched_index];
      const sched::Request& r = *s.request;
      RequestState& st = states.at(r.request_id);
      ASSERT_EQ(pr.first_logits_row, next_logits_row);
      ASSERT_EQ(pr.first_position, static_cast<int>(st.prompt_logprobs.size()));
      ASSERT_LE(pr.first_position + pr.count, r.num_prompt_tokens() - 1);
      const int row = input.row_of(pr.sched_index);
      for (int k = 0; k < pr.count; ++k) {
        const int pos = pr.first_position + k;
        ASSERT_EQ(b.logits_indices[pr.first_logits_row + k],
                  b.query_start_loc[row] + pos - s.num_computed_before);
        TokenLogprobs t;
        t.token = r.prompt_token_ids[pos + 1];
        st.prompt_logprobs.push_back(t);  // what the runner scores
      }
      next_logits_row += pr.count;
    }
    ASSERT_EQ(static_cast<int>(b.logits_indices.size()), next_logits_row);
    ASSERT_LE(b.staging_bytes, b.staging.nbytes());
  }

  static uint64_t seed_of(const std::string& id) { return 1000 + static_cast<uint64_t>(id[0]); }

  // Every request drew once per output token from its own seed.
  void check_generators(const std::map<std::string, int>& max_tokens) {
    for (const auto& [id, n] : max_tokens) {
      EXPECT_EQ(states.at(id).rng.seed, seed_of(id)) << id;
      EXPECT_EQ(states.at(id).rng.offset, static_cast<uint64_t>(n)) << id;
    }
  }

  sched::SchedulerConfig config;
  sched::Scheduler scheduler;
  InputBatch input;
  RequestStates states;
  std::map<std::string, std::pair<Ids, int>> last_table;  // table and preemption count
  std::set<std::string> finished;
  int num_preempted = 0;
  int num_partial_chunks = 0;
};

sched::SchedulerConfig config(int num_blocks, int budget) {
  sched::SchedulerConfig c;
  c.block_size = 4;
  c.num_blocks = num_blocks;
  c.max_model_len = 40;
  c.max_num_seqs = 4;
  c.max_num_batched_tokens = budget;
  c.enable_prefix_caching = false;
  return c;
}

// Chunked prefill (budget 8) and KV pressure (12 blocks of 4): requests are chunked, preempted,
// recomputed; requests finish and others take their rows.
TEST(InputBatch, FollowsChunkingPreemptionAndTurnover) {
  Harness h(config(12, 8));
  h.add("a", 13, 12, /*prompt_logprobs=*/2);
  h.add("b", 9, 14);
  h.add("c", 6, 10, /*prompt_logprobs=*/0);
  h.add("d", 3, 20);
  for (int i = 0; i < 400 && h.scheduler.has_unfinished(); ++i) {
    h.step();
    if (::testing::Test::HasFatalFailure()) return;
    if (i == 3) h.add("e", 11, 6, /*prompt_logprobs=*/1);  // joins mid-run
  }
  ASSERT_FALSE(h.scheduler.has_unfinished());
  EXPECT_EQ(h.finished.size(), 5u);
  EXPECT_GT(h.num_preempted, 0);       // the scenario does preempt
  EXPECT_GT(h.num_partial_chunks, 0);  // and chunk
  // Every prompt token after the first scored exactly once, recomputation notwithstanding.
  for (const auto& [id, len] : std::map<std::string, int>{{"a", 13}, {"c", 6}, {"e", 11}}) {
    const std::vector<TokenLogprobs>& lp = h.states.at(id).prompt_logprobs;
    ASSERT_EQ(static_cast<int>(lp.size()), len - 1) << id;
    for (int k = 0; k < len - 1; ++k) EXPECT_EQ(lp[k].token, 100 * (1 + id[0] - 'a') + k + 1);
  }
  EXPECT_TRUE(h.states.at("b").prompt_logprobs.empty());
  h.check_generators({{"a", 12}, {"b", 14}, {"c", 10}, {"d", 20}, {"e", 6}});
}

// Rows persist: a request that keeps running keeps its row and its table's storage, and a
// decode step appends only the new block.
TEST(InputBatch, KeptRowsAppendBlocksInPlace) {
  Harness h(config(32, 64));
  h.add("a", 7, 10);
  h.add("b", 2, 3);
  h.step();  // both prefill
  ASSERT_EQ(h.input.builder().num_blocks(h.input.row_of(0)), 2);
  for (int i = 0; i < 3; ++i) h.step();  // b finishes after 3 tokens; a decodes into block 3
  ASSERT_EQ(h.finished.count("b"), 1u);
  sched::SchedulerOutput out = h.scheduler.schedule();
  ASSERT_EQ(out.scheduled.size(), 1u);  // a alone, moved up to row 0
  h.input.update(out, h.states);
  EXPECT_EQ(h.input.row_of(0), 0);
  EXPECT_EQ(h.input.num_rows(), 1);
  EXPECT_EQ(h.input.builder().num_blocks(0), 3);
  EXPECT_EQ(h.input.builder().num_blocks(1), 0);  // b's row was emptied
  h.check(out, h.input.batch());
}

// A finished request's id used again while its old row is still in the batch: the new request
// draws from its own fresh generator, not the old row's.
TEST(InputBatch, ReusedRequestIdStartsFromItsOwnGenerator) {
  Harness h(config(32, 64));
  h.add("a", 5, 8);
  h.add("b", 3, 2);
  for (int i = 0; i < 2; ++i) h.step();
  ASSERT_EQ(h.finished.count("b"), 1u);
  h.finished.clear();
  h.last_table.erase("b");  // a new request: its table is not the old one's
  h.add("b", 4, 5);         // the old "b" still holds row 1
  for (int i = 0; i < 100 && h.scheduler.has_unfinished(); ++i) h.step();
  ASSERT_EQ(h.finished.size(), 2u);
  h.check_generators({{"a", 8}, {"b", 5}});
}

}  // namespace
}  // namespace fastlm::engine
