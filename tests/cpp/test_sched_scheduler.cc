// Scheduler driven by fake sampled tokens (no model): continuous batching, chunked prefill,
// budgets, prefix hits, preemption, priorities, aborts and stop checks.
#include <gtest/gtest.h>

#include <algorithm>
#include <deque>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "core/status.h"
#include "sched/scheduler.h"

namespace fastlm::sched {
namespace {

using Ids = std::vector<int32_t>;

Ids iota_tokens(int n, int32_t start) {
  Ids t(n);
  std::iota(t.begin(), t.end(), start);
  return t;
}

// max_model_len defaults to what the cache holds.
SchedulerConfig small_config(int num_blocks = 16, int block_size = 4, int max_model_len = 0) {
  SchedulerConfig c;
  if (max_model_len == 0) max_model_len = num_blocks * block_size;
  c.max_num_seqs = 8;
  c.max_num_batched_tokens = 64;
  c.max_model_len = max_model_len;
  c.block_size = block_size;
  c.num_blocks = num_blocks;
  return c;
}

// Owns a scheduler and plays the model runner + sampler: a request's n-th output token is
// 1000 + n unless a script says otherwise.
struct Driver {
  explicit Driver(SchedulerConfig c) : s(std::move(c)) {}

  void add(const std::string& id, Ids prompt, int max_tokens = 16, int priority = 0) {
    SamplingParams p;
    p.max_tokens = max_tokens;
    add(id, std::move(prompt), p, priority);
  }
  void add(const std::string& id, Ids prompt, SamplingParams p, int priority = 0) {
    auto r = std::make_unique<Request>();
    r->request_id = id;
    r->prompt_token_ids = std::move(prompt);
    r->params = std::move(p);
    r->priority = priority;
    s.add_request(std::move(r));
  }

  // One engine step. `last` keeps the schedule (its Request pointers die with finished
  // requests, so what tests inspect is copied into `last_info` before the update).
  std::vector<RequestDelta> step() {
    last = s.schedule();
    check_output(last);
    last_info.clear();
    std::vector<std::vector<int32_t>> sampled;
    for (const ScheduledRequest& sr : last.scheduled) {
      last_info.push_back({sr.request->request_id, sr.num_computed_before, sr.num_tokens,
                           sr.samples, *sr.block_table});
      std::vector<int32_t> t;
      if (sr.samples) {
        auto it = script.find(sr.request->request_id);
        if (it != script.end() && !it->second.empty()) {
          t.push_back(it->second.front());
          it->second.pop_front();
        } else {
          t.push_back(1000 + sr.request->num_output_tokens());
        }
      }
      sampled.push_back(std::move(t));
    }
    auto deltas = s.update_from_output(last, sampled);
    for (const RequestDelta& d : deltas) {
      auto& o = outputs[d.request_id];
      o.insert(o.end(), d.new_token_ids.begin(), d.new_token_ids.end());
      if (d.finish_reason) finished[d.request_id] = d;
    }
    s.kv().pool().check_invariants();
    return deltas;
  }

  void run_to_completion(int max_steps = 1000) {
    for (int i = 0; i < max_steps && s.has_unfinished(); ++i) step();
    ASSERT_FALSE(s.has_unfinished());
  }

  void check_output(const SchedulerOutput& out) {
    int total = 0;
    std::set<std::string> ids;
    for (const ScheduledRequest& sr : out.scheduled) {
      total += sr.num_tokens;
      ASSERT_TRUE(ids.insert(sr.request->request_id).second);
      ASSERT_EQ(sr.request->status, RequestStatus::kRunning);
      ASSERT_EQ(sr.num_computed_before, sr.request->num_computed_tokens);
      ASSERT_GT(sr.num_tokens, 0);
      ASSERT_EQ(sr.samples, sr.num_computed_before + sr.num_tokens == sr.request->num_tokens());
      const int bs = s.config().block_size;
      ASSERT_GE(static_cast<int>(sr.block_table->size()) * bs,
                sr.num_computed_before + sr.num_tokens);
      ASSERT_EQ(sr.block_table, &s.block_table(sr.request->request_id));
    }
    ASSERT_EQ(total, out.total_num_tokens);
    ASSERT_LE(total, s.config().max_num_batched_tokens);
    ASSERT_LE(static_cast<int>(out.scheduled.size()), s.config().max_num_seqs);
  }

  struct Info {
    std::string id;
    int num_computed_before;
    int num_tokens;
    bool samples;
    Ids block_table;
  };
  std::vector<std::string> scheduled_ids() const {
    std::vector<std::string> ids;
    for (const Info& i : last_info) ids.push_back(i.id);
    return ids;
  }
  const Info& sched(const std::string& id) const {
    for (const Info& i : last_info)
      if (i.id == id) return i;
    throw Error("not scheduled: " + id);
  }

  Scheduler s;
  SchedulerOutput last;
  std::vector<Info> last_info;
  std::map<std::string, std::deque<int32_t>> script;
  std::map<std::string, Ids> outputs;
  std::map<std::string, RequestDelta> finished;
};

Ids expected_outputs(int n) { return iota_tokens(n, 1000); }

TEST(Scheduler, SingleRequestLifecycle) {
  Driver d(small_config(8));
  d.add("a", iota_tokens(5, 0), /*max_tokens=*/3);
  EXPECT_TRUE(d.s.has_unfinished());
  EXPECT_EQ(d.s.num_waiting(), 1);
  auto deltas = d.step();
  ASSERT_EQ(d.scheduled_ids(), std::vector<std::string>{"a"});
  EXPECT_EQ(d.sched("a").num_computed_before, 0);
  EXPECT_EQ(d.sched("a").num_tokens, 5);
  EXPECT_TRUE(d.sched("a").samples);
  EXPECT_EQ(d.sched("a").block_table, (Ids{0, 1}));
  ASSERT_EQ(deltas.size(), 1u);
  EXPECT_EQ(deltas[0].new_token_ids, (Ids{1000}));
  EXPECT_FALSE(deltas[0].finish_reason.has_value());
  EXPECT_EQ(d.s.num_running(), 1);

  d.step();
  EXPECT_EQ(d.sched("a").num_computed_before, 5);
  EXPECT_EQ(d.sched("a").num_tokens, 1);
  deltas = d.step();
  ASSERT_EQ(deltas.size(), 1u);
  EXPECT_EQ(deltas[0].finish_reason, FinishReason::kLength);
  EXPECT_EQ(d.outputs["a"], expected_outputs(3));
  EXPECT_FALSE(d.s.has_unfinished());
  EXPECT_EQ(d.s.find_request("a"), nullptr);
  EXPECT_EQ(d.s.kv().num_free_blocks(), 8);
  EXPECT_EQ(d.s.kv().num_requests(), 0);
}

TEST(Scheduler, ChunkedPrefillSplitsALongPrompt) {
  SchedulerConfig c = small_config(8);
  c.max_num_batched_tokens = 4;
  Driver d(c);
  d.add("a", iota_tokens(10, 0), 2);
  auto deltas = d.step();
  EXPECT_EQ(d.sched("a").num_tokens, 4);
  EXPECT_FALSE(d.sched("a").samples);
  EXPECT_TRUE(deltas.empty());  // no token yet
  EXPECT_EQ(d.s.find_request("a")->status, RequestStatus::kRunning);
  EXPECT_EQ(d.sched("a").block_table, (Ids{0}));
  d.step();
  EXPECT_EQ(d.sched("a").num_computed_before, 4);
  EXPECT_EQ(d.sched("a").num_tokens, 4);
  EXPECT_FALSE(d.sched("a").samples);
  EXPECT_EQ(d.sched("a").block_table, (Ids{0, 1}));
  deltas = d.step();
  EXPECT_EQ(d.sched("a").num_computed_before, 8);
  EXPECT_EQ(d.sched("a").num_tokens, 2);
  EXPECT_TRUE(d.sched("a").samples);
  ASSERT_EQ(deltas.size(), 1u);
  EXPECT_EQ(deltas[0].new_token_ids, (Ids{1000}));
  d.run_to_completion();
  EXPECT_EQ(d.outputs["a"], expected_outputs(2));
}

TEST(Scheduler, MidPrefillRequestMustNotGetTokens) {
  SchedulerConfig c = small_config(8);
  c.max_num_batched_tokens = 4;
  Scheduler s(c);
  auto r = std::make_unique<Request>();
  r->request_id = "a";
  r->prompt_token_ids = iota_tokens(10, 0);
  s.add_request(std::move(r));
  SchedulerOutput out = s.schedule();
  EXPECT_THROW(s.update_from_output(out, {{5}}), Error);
  EXPECT_THROW(s.update_from_output(out, {}), Error);
}

TEST(Scheduler, TokenBudgetIsSharedRunningFirst) {
  SchedulerConfig c = small_config(16);
  c.max_num_batched_tokens = 8;
  Driver d(c);
  d.add("a", iota_tokens(5, 0), 4);
  d.add("b", iota_tokens(5, 100), 4);
  d.add("c", iota_tokens(5, 200), 4);
  d.step();
  EXPECT_EQ(d.scheduled_ids(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(d.sched("a").num_tokens, 5);
  EXPECT_EQ(d.sched("b").num_tokens, 3);  // chunk: the budget ran out
  EXPECT_FALSE(d.sched("b").samples);
  EXPECT_EQ(d.last.total_num_tokens, 8);
  EXPECT_EQ(d.s.num_waiting(), 1);
  d.step();
  EXPECT_EQ(d.scheduled_ids(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(d.sched("a").num_tokens, 1);  // decode
  EXPECT_EQ(d.sched("b").num_tokens, 2);  // rest of the prompt
  EXPECT_TRUE(d.sched("b").samples);
  EXPECT_EQ(d.sched("c").num_tokens, 5);
  EXPECT_EQ(d.last.total_num_tokens, 8);
  d.run_to_completion();
  for (const char* id : {"a", "b", "c"}) EXPECT_EQ(d.outputs[id], expected_outputs(4));
  EXPECT_EQ(d.s.kv().num_free_blocks(), 16);
}

TEST(Scheduler, MaxNumSeqsCapsRunningRequests) {
  SchedulerConfig c = small_config(16);
  c.max_num_seqs = 2;
  Driver d(c);
  d.add("a", iota_tokens(3, 0), 2);
  d.add("b", iota_tokens(3, 100), 5);
  d.add("c", iota_tokens(3, 200), 2);
  d.step();
  EXPECT_EQ(d.scheduled_ids(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(d.s.num_waiting(), 1);
  d.step();  // a finishes (2 tokens); c can join only next step
  EXPECT_EQ(d.scheduled_ids(), (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(d.finished.contains("a"));
  d.step();
  EXPECT_EQ(d.scheduled_ids(), (std::vector<std::string>{"b", "c"}));
  d.run_to_completion();
  EXPECT_EQ(d.outputs["b"], expected_outputs(5));
  EXPECT_EQ(d.outputs["c"], expected_outputs(2));
}

TEST(Scheduler, PrefixHitSkipsCachedTokensButRecomputesTheLast) {
  Driver d(small_config(16));
  d.add("a", iota_tokens(8, 0), 1);
  d.run_to_completion();
  d.add("b", iota_tokens(8, 0), 1);  // same prompt: 1 of 2 blocks may hit
  auto deltas = d.step();
  EXPECT_EQ(d.sched("b").num_computed_before, 4);
  EXPECT_EQ(d.sched("b").num_tokens, 4);
  EXPECT_EQ(d.s.stats().prefix_cache_queries, 16u);
  EXPECT_EQ(d.s.stats().prefix_cache_hits, 4u);
  ASSERT_EQ(deltas.size(), 1u);
  EXPECT_EQ(deltas[0].num_cached_tokens, 4);
}

TEST(Scheduler, RunningRequestsShareComputedPrefixBlocks) {
  Driver d(small_config(16));
  d.add("a", iota_tokens(8, 0), 4);
  d.step();  // a's prompt computed and cached
  Ids pb = iota_tokens(8, 0);
  pb.push_back(42);
  pb.push_back(43);
  d.add("b", pb, 4);
  d.step();
  EXPECT_EQ(d.sched("b").num_computed_before, 8);
  EXPECT_EQ(d.sched("b").num_tokens, 2);
  const Ids& ta = d.s.block_table("a");
  const Ids& tb = d.s.block_table("b");
  EXPECT_EQ(ta, (Ids{0, 1, 2}));
  EXPECT_EQ(tb, (Ids{0, 1, 3}));
  EXPECT_EQ(d.s.kv().pool().block(0).ref_cnt, 2);
  EXPECT_EQ(d.s.kv().pool().block(1).ref_cnt, 2);
  EXPECT_EQ(d.s.find_request("b")->num_cached_tokens, 8);
  d.run_to_completion();
  EXPECT_EQ(d.finished["b"].num_cached_tokens, 8);
  EXPECT_EQ(d.s.kv().num_free_blocks(), 16);
}

// 4 blocks of 4 tokens: two growing requests run out of blocks; the later one is preempted,
// requeued first, resumed with a prefix hit on its own first block, and still completes.
TEST(Scheduler, FcfsPreemptsTheLatestRunningRequestAndResumesIt) {
  Driver d(small_config(/*num_blocks=*/4, /*block_size=*/4, /*max_model_len=*/16));
  d.add("a", iota_tokens(4, 0), 8);
  d.add("b", iota_tokens(4, 100), 8);
  d.add("c", iota_tokens(2, 200), 1);  // waits behind the preempted b
  d.step();
  EXPECT_EQ(d.s.block_table("a"), (Ids{0}));
  EXPECT_EQ(d.s.block_table("b"), (Ids{1}));
  EXPECT_EQ(d.sched("c").block_table, (Ids{2}));
  EXPECT_TRUE(d.finished.contains("c"));  // one token and done: block 2 back
  d.step();                               // c freed its uncached block 2 to the head: [2, 3]
  EXPECT_EQ(d.s.block_table("a"), (Ids{0, 2}));
  EXPECT_EQ(d.s.block_table("b"), (Ids{1, 3}));
  for (int i = 0; i < 3; ++i) d.step();  // positions 5..7 fit: 5 outputs, 9 tokens each
  EXPECT_TRUE(d.last.preempted_ids.empty());
  EXPECT_EQ(d.s.kv().num_free_blocks(), 0);

  d.step();  // a needs a 3rd block: b (admitted last) is preempted
  EXPECT_EQ(d.last.preempted_ids, std::vector<std::string>{"b"});
  EXPECT_EQ(d.scheduled_ids(), std::vector<std::string>{"a"});
  // b freed {3, 1} tail first, both cached: to the tail, [3, 1]; a takes 3 (and its hash).
  EXPECT_EQ(d.s.block_table("a"), (Ids{0, 2, 3}));
  EXPECT_EQ(d.s.kv().pool().free_block_ids(), (Ids{1}));
  const Request* b = d.s.find_request("b");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->status, RequestStatus::kPreempted);
  EXPECT_EQ(b->num_computed_tokens, 0);
  EXPECT_EQ(b->num_preemptions, 1);
  EXPECT_EQ(b->output_token_ids, expected_outputs(5));  // kept
  EXPECT_EQ(d.s.num_waiting(), 1);
  EXPECT_EQ(d.s.stats().num_preemptions, 1u);

  // b (9 tokens) needs 3 blocks: a hit on its own cached first block 1 (its second block's
  // hash went with block 3) + 2 new, but only block 1 is free.
  d.step();
  EXPECT_EQ(d.scheduled_ids(), std::vector<std::string>{"a"});
  d.step();  // a finishes: blocks {3, 2, 0} freed tail first; uncached 3 to the head
  EXPECT_TRUE(d.finished.contains("a"));
  EXPECT_EQ(d.s.kv().pool().free_block_ids(), (Ids{3, 1, 2, 0}));
  d.step();  // b resumes: prompt + 5 outputs recomputed, its first block from the cache
  EXPECT_EQ(d.scheduled_ids(), std::vector<std::string>{"b"});
  EXPECT_EQ(d.sched("b").num_computed_before, 4);
  EXPECT_EQ(d.sched("b").num_tokens, 5);
  EXPECT_TRUE(d.sched("b").samples);
  EXPECT_EQ(d.s.block_table("b"), (Ids{1, 3, 2}));
  d.run_to_completion();
  EXPECT_EQ(d.outputs["a"], expected_outputs(8));
  EXPECT_EQ(d.outputs["b"], expected_outputs(8));
  EXPECT_EQ(d.finished["b"].finish_reason, FinishReason::kLength);
  EXPECT_EQ(d.finished["b"].num_cached_tokens, 0);  // the hit at first schedule
  EXPECT_EQ(d.s.kv().num_free_blocks(), 4);
}

TEST(Scheduler, RequestThatIsItsOwnVictimIsNotScheduled) {
  Driver d(small_config(4, 4, 16));
  d.add("a", iota_tokens(3, 0), 8);
  d.add("b", iota_tokens(4, 100), 8);
  for (int i = 0; i < 5; ++i) d.step();
  EXPECT_TRUE(d.last.preempted_ids.empty());
  d.step();  // a at position 7 fits; b at position 8 needs a block: b is the latest
  EXPECT_EQ(d.last.preempted_ids, std::vector<std::string>{"b"});
  EXPECT_EQ(d.scheduled_ids(), std::vector<std::string>{"a"});
  EXPECT_EQ(d.s.find_request("b")->status, RequestStatus::kPreempted);
  d.run_to_completion();
  EXPECT_EQ(d.outputs["a"], expected_outputs(8));
  EXPECT_EQ(d.outputs["b"], expected_outputs(8));
  EXPECT_EQ(d.s.kv().num_free_blocks(), 4);
}

TEST(Scheduler, PriorityPolicyOrdersWaitingRequests) {
  SchedulerConfig c = small_config(16);
  c.policy = SchedulingPolicy::kPriority;
  c.max_num_seqs = 1;
  Driver d(c);
  d.add("low", iota_tokens(3, 0), 1, /*priority=*/5);
  d.add("high", iota_tokens(3, 100), 1, /*priority=*/1);
  d.add("mid", iota_tokens(3, 200), 1, /*priority=*/3);
  d.add("mid2", iota_tokens(3, 300), 1, /*priority=*/3);  // same priority: arrival order
  std::vector<std::string> order;
  while (d.s.has_unfinished()) {
    d.step();
    for (const auto& id : d.scheduled_ids()) order.push_back(id);
  }
  EXPECT_EQ(order, (std::vector<std::string>{"high", "mid", "mid2", "low"}));
}

TEST(Scheduler, PriorityPreemptsTheWorstEvenIfAlreadyScheduled) {
  SchedulerConfig c = small_config(4, 4, 16);
  c.policy = SchedulingPolicy::kPriority;
  Driver d(c);
  d.add("y", iota_tokens(4, 0), 8, /*priority=*/9);
  d.step();  // y: block 0, 5 tokens now
  d.add("x", iota_tokens(3, 100), 8, /*priority=*/0);
  d.add("z", iota_tokens(3, 200), 8, /*priority=*/1);
  d.step();  // y decodes into block 1; x and z prefill into 2 and 3
  EXPECT_EQ(d.scheduled_ids(), (std::vector<std::string>{"y", "x", "z"}));
  EXPECT_EQ(d.s.block_table("y"), (Ids{0, 1}));
  EXPECT_EQ(d.s.block_table("x"), (Ids{2}));
  EXPECT_EQ(d.s.block_table("z"), (Ids{3}));
  d.step();  // everyone fits
  EXPECT_TRUE(d.last.preempted_ids.empty());
  d.step();  // y (scheduled first) is taken back and preempted so x and z can grow
  EXPECT_EQ(d.last.preempted_ids, std::vector<std::string>{"y"});
  EXPECT_EQ(d.scheduled_ids(), (std::vector<std::string>{"x", "z"}));
  EXPECT_EQ(d.last.total_num_tokens, 2);
  EXPECT_EQ(d.s.block_table("x"), (Ids{2, 1}));
  EXPECT_EQ(d.s.block_table("z"), (Ids{3, 0}));
  EXPECT_EQ(d.s.find_request("y")->status, RequestStatus::kPreempted);
  d.run_to_completion();
  for (const char* id : {"x", "y", "z"}) EXPECT_EQ(d.outputs[id], expected_outputs(8));
  EXPECT_EQ(d.s.kv().num_free_blocks(), 4);
}

TEST(Scheduler, AbortWaitingAndRunningReturnsEveryBlock) {
  SchedulerConfig c = small_config(8);
  c.max_num_seqs = 1;
  Driver d(c);
  d.add("a", iota_tokens(6, 0), 10);
  d.add("b", iota_tokens(6, 100), 10);
  d.step();
  EXPECT_EQ(d.s.kv().num_free_blocks(), 6);
  EXPECT_TRUE(d.s.abort_request("b"));  // waiting
  EXPECT_EQ(d.s.num_waiting(), 0);
  EXPECT_TRUE(d.s.abort_request("a"));  // running
  EXPECT_EQ(d.s.num_running(), 0);
  EXPECT_EQ(d.s.kv().num_free_blocks(), 8);
  EXPECT_FALSE(d.s.abort_request("a"));
  EXPECT_FALSE(d.s.abort_request("nope"));
  EXPECT_TRUE(d.s.has_unfinished());  // the abort deltas are pending
  auto deltas = d.step();
  EXPECT_TRUE(d.last.scheduled.empty());
  ASSERT_EQ(deltas.size(), 2u);
  EXPECT_EQ(deltas[0].request_id, "b");
  EXPECT_EQ(deltas[0].finish_reason, FinishReason::kAbort);
  EXPECT_EQ(deltas[1].request_id, "a");
  EXPECT_EQ(deltas[1].finish_reason, FinishReason::kAbort);
  EXPECT_FALSE(d.s.has_unfinished());
  // The id is free again.
  d.add("a", iota_tokens(6, 0), 1);
  d.run_to_completion();
  EXPECT_EQ(d.s.kv().num_free_blocks(), 8);
}

TEST(Scheduler, AbortBetweenScheduleAndUpdate) {
  Scheduler s(small_config(8));
  for (const char* id : {"a", "b"}) {
    auto r = std::make_unique<Request>();
    r->request_id = id;
    r->prompt_token_ids = iota_tokens(5, 0);
    s.add_request(std::move(r));
  }
  SchedulerOutput out = s.schedule();
  ASSERT_EQ(out.scheduled.size(), 2u);
  EXPECT_TRUE(s.abort_request("a"));
  auto deltas = s.update_from_output(out, {{7}, {8}});
  ASSERT_EQ(deltas.size(), 2u);
  EXPECT_EQ(deltas[0].request_id, "a");
  EXPECT_EQ(deltas[0].finish_reason, FinishReason::kAbort);
  EXPECT_TRUE(deltas[0].new_token_ids.empty());
  EXPECT_EQ(deltas[1].request_id, "b");
  EXPECT_EQ(deltas[1].new_token_ids, (Ids{8}));
  EXPECT_EQ(s.kv().num_free_blocks(), 6);  // b holds 2
}

SchedulerConfig eos_config() {
  SchedulerConfig c = small_config(16);
  c.eos_token_ids = {2};
  return c;
}

TEST(SchedulerStop, EosStops) {
  Driver d(eos_config());
  d.add("a", iota_tokens(3, 10), 10);
  d.script["a"] = {5, 2, 6};
  d.run_to_completion();
  EXPECT_EQ(d.outputs["a"], (Ids{5, 2}));
  EXPECT_EQ(d.finished["a"].finish_reason, FinishReason::kStop);
  EXPECT_EQ(d.finished["a"].stop_token, 2);
  EXPECT_EQ(d.s.kv().num_free_blocks(), 16);
}

TEST(SchedulerStop, MinTokensDelaysEosAndStopIds) {
  Driver d(eos_config());
  SamplingParams p;
  p.max_tokens = 10;
  p.min_tokens = 3;
  p.stop_token_ids = {7};
  d.add("a", iota_tokens(3, 10), p);
  d.script["a"] = {2, 7, 2, 9};
  d.run_to_completion();
  EXPECT_EQ(d.outputs["a"], (Ids{2, 7, 2}));  // the third token may stop
  EXPECT_EQ(d.finished["a"].finish_reason, FinishReason::kStop);
  EXPECT_EQ(d.finished["a"].stop_token, 2);
}

TEST(SchedulerStop, IgnoreEosRunsToMaxTokensButStopIdsStillStop) {
  Driver d(eos_config());
  SamplingParams p;
  p.max_tokens = 3;
  p.ignore_eos = true;
  d.add("a", iota_tokens(3, 10), p);
  d.script["a"] = {2, 2, 2};
  p.stop_token_ids = {2};
  d.add("b", iota_tokens(3, 10), p);
  d.script["b"] = {4, 2};
  d.run_to_completion();
  EXPECT_EQ(d.outputs["a"], (Ids{2, 2, 2}));
  EXPECT_EQ(d.finished["a"].finish_reason, FinishReason::kLength);
  EXPECT_FALSE(d.finished["a"].stop_token.has_value());
  EXPECT_EQ(d.outputs["b"], (Ids{4, 2}));
  EXPECT_EQ(d.finished["b"].finish_reason, FinishReason::kStop);
  EXPECT_EQ(d.finished["b"].stop_token, 2);
}

TEST(SchedulerStop, StopBeatsLengthOnTheLastToken) {
  Driver d(eos_config());
  d.add("a", iota_tokens(3, 10), 2);
  d.script["a"] = {4, 2};
  d.run_to_completion();
  EXPECT_EQ(d.finished["a"].finish_reason, FinishReason::kStop);
}

TEST(SchedulerStop, MaxModelLenCapsLongRequests) {
  Driver d(small_config(16, 4, /*max_model_len=*/8));
  d.add("a", iota_tokens(6, 0), 100);       // admitted despite 6 + 100 > 8
  d.add("full", iota_tokens(8, 100), 100);  // prompt == max_model_len: one token
  d.run_to_completion();
  EXPECT_EQ(d.outputs["a"], expected_outputs(2));
  EXPECT_EQ(d.finished["a"].finish_reason, FinishReason::kLength);
  EXPECT_EQ(d.outputs["full"], expected_outputs(1));
  EXPECT_EQ(d.finished["full"].finish_reason, FinishReason::kLength);
}

TEST(SchedulerStop, TokensAfterAStopAreDropped) {
  Scheduler s(eos_config());
  auto r = std::make_unique<Request>();
  r->request_id = "a";
  r->prompt_token_ids = {1, 3};
  s.add_request(std::move(r));
  SchedulerOutput out = s.schedule();
  auto deltas = s.update_from_output(out, {{5, 2, 6}});  // e.g. speculative tokens
  ASSERT_EQ(deltas.size(), 1u);
  EXPECT_EQ(deltas[0].new_token_ids, (Ids{5, 2}));
  EXPECT_EQ(deltas[0].finish_reason, FinishReason::kStop);
}

TEST(Scheduler, RejectsInvalidRequestsAndConfigs) {
  Scheduler s(small_config(16, 4, 8));
  auto make = [](const std::string& id, Ids prompt) {
    auto r = std::make_unique<Request>();
    r->request_id = id;
    r->prompt_token_ids = std::move(prompt);
    return r;
  };
  s.add_request(make("a", {1}));
  EXPECT_THROW(s.add_request(make("a", {1})), InvalidArgument);
  EXPECT_THROW(s.add_request(make("b", {})), InvalidArgument);
  EXPECT_THROW(s.add_request(make("c", iota_tokens(9, 0))), InvalidArgument);
  auto bad = make("d", {1});
  bad->params.max_tokens = 0;
  EXPECT_THROW(s.add_request(std::move(bad)), InvalidArgument);
  EXPECT_THROW(s.add_request(nullptr), InvalidArgument);
  EXPECT_THROW(Scheduler(small_config(1, 4, 8)), InvalidArgument);  // 8 tokens need 2 blocks
  SchedulerConfig c = small_config();
  c.max_num_seqs = 0;
  EXPECT_THROW(Scheduler{c}, InvalidArgument);
}

TEST(Scheduler, FinishReasonNames) {
  EXPECT_STREQ(finish_reason_name(FinishReason::kStop), "stop");
  EXPECT_STREQ(finish_reason_name(FinishReason::kLength), "length");
  EXPECT_STREQ(finish_reason_name(FinishReason::kAbort), "abort");
  EXPECT_FALSE(finish_reason_of(RequestStatus::kPreempted).has_value());
  EXPECT_EQ(finish_reason_of(RequestStatus::kFinishedAborted), FinishReason::kAbort);
}

// Many requests, a tiny cache, random aborts: every request ends with exactly its expected
// tokens, invariants hold every step and every block comes back.
TEST(Scheduler, RandomizedStressKeepsInvariants) {
  for (int policy = 0; policy < 2; ++policy) {
    for (bool caching : {true, false}) {
      SchedulerConfig c = small_config(/*num_blocks=*/12, /*block_size=*/4, /*max_model_len=*/40);
      c.max_num_batched_tokens = 16;
      c.max_num_seqs = 5;
      c.enable_prefix_caching = caching;
      c.policy = policy ? SchedulingPolicy::kPriority : SchedulingPolicy::kFcfs;
      Driver d(c);
      std::mt19937 rng(7 + policy);
      std::map<std::string, int> expected_len;
      std::set<std::string> aborted;
      int next_id = 0;
      for (int step = 0; step < 400; ++step) {
        if (next_id < 60 && rng() % 2 == 0) {
          std::string id = "r" + std::to_string(next_id++);
          const int np = 1 + static_cast<int>(rng() % 20);
          Ids prompt(np);
          for (auto& t : prompt) t = static_cast<int32_t>(rng() % 3);  // shared prefixes
          const int max_tokens = 1 + static_cast<int>(rng() % 12);
          expected_len[id] = std::min(max_tokens, c.max_model_len - np);
          if (expected_len[id] == 0) expected_len[id] = 1;
          d.add(id, prompt, max_tokens, static_cast<int>(rng() % 3));
        }
        if (next_id > 0 && rng() % 15 == 0) {
          std::string id = "r" + std::to_string(rng() % next_id);
          if (d.s.abort_request(id)) aborted.insert(id);
        }
        d.step();
        int held = 0;
        for (int b = 0; b < c.num_blocks; ++b) held += d.s.kv().pool().block(b).ref_cnt;
        int in_tables = 0;
        for (int i = 0; i < next_id; ++i) {
          std::string id = "r" + std::to_string(i);
          in_tables += static_cast<int>(d.s.block_table(id).size());
          if (const Request* r = d.s.find_request(id)) {
            ASSERT_GE(static_cast<int>(d.s.block_table(id).size()) * c.block_size,
                      r->num_computed_tokens);
          }
        }
        ASSERT_EQ(held, in_tables);  // one reference per block-table entry
      }
      d.run_to_completion();
      EXPECT_EQ(d.s.kv().num_free_blocks(), c.num_blocks);
      EXPECT_EQ(d.s.kv().num_requests(), 0);
      EXPECT_EQ(d.finished.size(), expected_len.size());
      for (const auto& [id, n] : expected_len) {
        if (aborted.contains(id)) {
          EXPECT_EQ(d.finished[id].finish_reason, FinishReason::kAbort) << id;
          continue;
        }
        EXPECT_EQ(d.outputs[id], expected_outputs(n)) << id;
        EXPECT_EQ(d.finished[id].finish_reason, FinishReason::kLength) << id;
      }
      EXPECT_GT(d.s.stats().num_preemptions, 0u);
    }
  }
}

}  // namespace
}  // namespace fastlm::sched
