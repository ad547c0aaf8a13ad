#include "sched/scheduler.h"

#include <algorithm>
#include <utility>

#include "core/status.h"

namespace fastlm::sched {

namespace {
int cdiv(int a, int b) { return (a + b - 1) / b; }
bool contains(const std::vector<int32_t>& v, int32_t t) {
  return std::find(v.begin(), v.end(), t) != v.end();
}
}  // namespace

Scheduler::Scheduler(SchedulerConfig config)
    : config_(std::move(config)),
      kv_(config_.block_size > 0 ? config_.block_size : 1,
          config_.num_blocks > 0 ? config_.num_blocks : 1, config_.enable_prefix_caching) {
  const SchedulerConfig& c = config_;
  FASTLM_CHECK_ARG(c.max_num_seqs > 0, "max_num_seqs must be positive, got ", c.max_num_seqs);
  FASTLM_CHECK_ARG(c.max_num_batched_tokens > 0, "max_num_batched_tokens must be positive, got ",
                   c.max_num_batched_tokens);
  FASTLM_CHECK_ARG(c.max_model_len > 0, "max_model_len must be positive, got ", c.max_model_len);
  FASTLM_CHECK_ARG(c.block_size > 0, "block_size must be positive, got ", c.block_size);
  FASTLM_CHECK_ARG(c.num_blocks > 0, "num_blocks must be positive, got ", c.num_blocks);
  FASTLM_CHECK_ARG(cdiv(c.max_model_len, c.block_size) <= c.num_blocks, "the KV cache (",
                   c.num_blocks, " blocks of ", c.block_size,
                   " tokens) cannot hold one sequence of max_model_len ", c.max_model_len,
                   " tokens; lower max_model_len or give the KV cache more memory");
}

bool Scheduler::ranks_before(const Request& a, const Request& b) const {
  switch (config_.policy) {
    case SchedulingPolicy::kFcfs:
      return a.arrival_seq < b.arrival_seq;
    case SchedulingPolicy::kPriority:
      return std::pair(a.priority, a.arrival_seq) < std::pair(b.priority, b.arrival_seq);
  }
  return false;
}

void Scheduler::add_request(std::unique_ptr<Request> request) {
  FASTLM_CHECK_ARG(request != nullptr, "add_request: null request");
  Request& r = *request;
  FASTLM_CHECK_ARG(!requests_.contains(r.request_id), "request id '", r.request_id,
                   "' is already in use");
  FASTLM_CHECK_ARG(!r.prompt_token_ids.empty(), "request '", r.request_id, "': empty prompt");
  FASTLM_CHECK_ARG(r.num_prompt_tokens() <= config_.max_model_len, "request '", r.request_id,
                   "': prompt of ", r.num_prompt_tokens(), " tokens is longer than max_model_len ",
                   config_.max_model_len);
  FASTLM_CHECK_ARG(!r.is_unchunked() || r.num_prompt_tokens() <= config_.max_num_batched_tokens,
                   "request '", r.request_id, "': a ", r.is_pooling() ? "pooling" : "encoder",
                   " prompt of ", r.num_prompt_tokens(),
                   " tokens cannot run in one step of max_num_batched_tokens ",
                   config_.max_num_batched_tokens);
  FASTLM_CHECK_ARG(r.params.max_tokens >= 1, "request '", r.request_id,
                   "': max_tokens must be at least 1, got ", r.params.max_tokens);
  FASTLM_CHECK_ARG(r.params.min_tokens >= 0, "request '", r.request_id,
                   "': min_tokens must be non-negative, got ", r.params.min_tokens);
  r.output_token_ids.clear();
  r.status = RequestStatus::kWaiting;
  r.num_computed_tokens = 0;
  r.num_cached_tokens = 0;
  r.num_preemptions = 0;
  r.stop_token.reset();
  r.arrival_seq = next_arrival_seq_++;
  Request* raw = request.get();
  requests_.emplace(r.request_id, std::move(request));
  push_waiting(raw);
}

void Scheduler::push_waiting(Request* r) {
  switch (config_.policy) {
    case SchedulingPolicy::kFcfs:
      waiting_.push_back(r);
      return;
    case SchedulingPolicy::kPriority: {
      auto pos = std::upper_bound(waiting_.begin(), waiting_.end(), r,
                                  [this](Request* a, Request* b) { return ranks_before(*a, *b); });
      waiting_.insert(pos, r);
      return;
    }
  }
}

void Scheduler::requeue_preempted(Request* r) {
  switch (config_.policy) {
    case SchedulingPolicy::kFcfs:
      waiting_.push_front(r);  // it was admitted before anything still waiting
      return;
    case SchedulingPolicy::kPriority:
      push_waiting(r);
      return;
  }
}

size_t Scheduler::pick_victim() const {
  FASTLM_ASSERT(!running_.empty());
  size_t v = running_.size() - 1;  // fcfs: the most recently admitted
  if (config_.policy == SchedulingPolicy::kPriority) {
    for (size_t i = 0; i < running_.size(); ++i) {
      if (ranks_before(*running_[v], *running_[i])) v = i;
    }
  }
  return v;
}

void Scheduler::preempt(size_t running_index) {
  Request* r = running_[running_index];
  running_.erase(running_.begin() + static_cast<std::ptrdiff_t>(running_index));
  kv_.free(*r);
  r->status = RequestStatus::kPreempted;
  r->num_computed_tokens = 0;  // recomputed from scratch (the prefix cache may help)
  ++r->num_preemptions;
  ++num_preemptions_;
  requeue_preempted(r);
}

SchedulerOutput Scheduler::schedule() {
  SchedulerOutput out;
  int budget = config_.max_num_batched_tokens;
  auto add_scheduled = [&](Request* r, int num_new) {
    FASTLM_ASSERT(num_new > 0 && r->num_computed_tokens + num_new <= config_.max_model_len);
    ScheduledRequest s;
    s.request = r;
    s.num_computed_before = r->num_computed_tokens;
    s.num_tokens = num_new;
    s.samples = r->num_computed_tokens + num_new == r->num_tokens();
    s.block_table = &kv_.block_ids(r->request_id);
    out.scheduled.push_back(s);
    out.total_num_tokens += num_new;
    budget -= num_new;
  };

  // 1. Running requests, in admission order. Each catches up as far as the budget allows.
  size_t i = 0;
  while (i < running_.size() && budget > 0) {
    Request* r = running_[i];
    const int num_new = std::min(r->num_tokens() - r->num_computed_tokens, budget);
    FASTLM_ASSERT(num_new > 0);  // a running request always has its last token to compute
    bool self_preempted = false;
    while (!kv_.allocate_slots(*r, num_new)) {
      const size_t v = pick_victim();
      Request* victim = running_[v];
      // Under kPriority the victim may already be scheduled this step: take it back.
      auto it = std::find_if(out.scheduled.begin(), out.scheduled.end(),
                             [&](const ScheduledRequest& s) { return s.request == victim; });
      if (it != out.scheduled.end()) {
        budget += it->num_tokens;
        out.total_num_tokens -= it->num_tokens;
        out.scheduled.erase(it);
      }
      preempt(v);
      out.preempted_ids.push_back(victim->request_id);
      if (v < i) --i;
      if (victim == r) {
        self_preempted = true;
        break;
      }
    }
    if (self_preempted) continue;  // running_[i] is now the next request
    add_scheduled(r, num_new);
    ++i;
  }

  // 2. Waiting requests, in queue order, while budget, sequence cap and blocks allow. Not after
  // a preemption: blocks are short, and the preempted request is first in line anyway.
  if (out.preempted_ids.empty()) {
    while (!waiting_.empty() && budget > 0 &&
           static_cast<int>(running_.size()) < config_.max_num_seqs) {
      Request* r = waiting_.front();
      FASTLM_ASSERT(r->num_computed_tokens == 0);
      // Pooling requests take no prefix-cache hit: encoders need every token in the batch,
      // and MEAN / ALL pooling every token's hidden state.
      // Encoder-decoder requests neither: their placeholder tokens say nothing of the audio.
      sched::ComputedBlocks hit =
          r->is_unchunked() ? sched::ComputedBlocks{} : kv_.get_computed_blocks(*r);
      const int num_new = std::min(r->num_tokens() - hit.num_tokens, budget);
      // Pooling and encoder prompts are never chunked: they wait for a step with room for all
      // their tokens (a preempted encoder-decoder request recomputes its outputs with them).
      if (r->is_unchunked() && num_new < r->num_tokens()) break;
      if (!kv_.allocate_slots(*r, num_new, hit)) break;  // head of line waits for blocks
      waiting_.pop_front();
      if (r->status == RequestStatus::kWaiting) r->num_cached_tokens = hit.num_tokens;
      r->num_computed_tokens = hit.num_tokens;
      r->status = RequestStatus::kRunning;
      running_.push_back(r);
      add_scheduled(r, num_new);
      // Safe to publish before the forward pass: admitted requests are never preempted in the
      // step that admits them (no preemption happens in this loop), so the blocks get filled.
      kv_.cache_blocks(*r, r->num_computed_tokens + num_new);
    }
  }
  return out;
}

bool Scheduler::check_stop(Request& r, int32_t t) const {
  const SamplingParams& p = r.params;
  if (r.num_output_tokens() >= p.min_tokens) {
    if ((!p.ignore_eos && contains(config_.eos_token_ids, t)) || contains(p.stop_token_ids, t)) {
      r.status = RequestStatus::kFinishedStopped;
      r.stop_token = t;
      return true;
    }
  }
  if (r.num_output_tokens() >= p.max_tokens || r.num_tokens() >= config_.max_model_len) {
    r.status = RequestStatus::kFinishedLength;
    return true;
  }
  return false;
}

void Scheduler::release(Request& r) {
  kv_.free(r);
  std::erase(running_, &r);
  std::erase(waiting_, &r);
}

bool Scheduler::abort_request(const std::string& request_id) {
  auto it = requests_.find(request_id);
  if (it == requests_.end()) return false;
  Request& r = *it->second;
  FASTLM_ASSERT(!r.is_finished());
  release(r);
  r.status = RequestStatus::kFinishedAborted;
  RequestDelta d;
  d.request_id = r.request_id;
  d.finish_reason = FinishReason::kAbort;
  d.num_cached_tokens = r.num_cached_tokens;
  pending_deltas_.push_back(std::move(d));
  graveyard_.push_back(std::move(it->second));
  requests_.erase(it);
  return true;
}

std::vector<RequestDelta> Scheduler::update_from_output(
    const SchedulerOutput& output, const std::vector<std::vector<int32_t>>& sampled) {
  FASTLM_CHECK(sampled.size() == output.scheduled.size(), "update_from_output: ", sampled.size(),
               " sampled lists for ", output.scheduled.size(), " scheduled requests");
  std::vector<RequestDelta> deltas = std::move(pending_deltas_);
  pending_deltas_.clear();
  std::vector<Request*> finished;
  for (size_t k = 0; k < output.scheduled.size(); ++k) {
    const ScheduledRequest& s = output.scheduled[k];
    Request& r = *s.request;
    if (r.is_finished()) continue;  // aborted after schedule(); its delta is already out
    FASTLM_ASSERT(r.status == RequestStatus::kRunning &&
                  r.num_computed_tokens == s.num_computed_before);
    r.num_computed_tokens += s.num_tokens;
    kv_.cache_blocks(r);
    const std::vector<int32_t>& tokens = sampled[k];
    if (r.is_pooling()) {
      // Computed in one step: the runner pooled it; nothing is sampled, it finishes now.
      FASTLM_CHECK(s.samples && tokens.empty(), "update_from_output: pooling request '",
                   r.request_id, "' must be computed whole and not sampled");
      r.status = RequestStatus::kFinishedStopped;
      RequestDelta d;
      d.request_id = r.request_id;
      d.finish_reason = r.finish_reason();
      finished.push_back(&r);
      deltas.push_back(std::move(d));
      continue;
    }
    FASTLM_CHECK(
        tokens.empty() != s.samples, "update_from_output: request '", r.request_id, "' ",
        s.samples ? "samples this step but got no token" : "is mid-prefill but got sampled tokens");
    if (!s.samples) continue;
    RequestDelta d;
    d.request_id = r.request_id;
    for (int32_t t : tokens) {
      r.output_token_ids.push_back(t);
      d.new_token_ids.push_back(t);
      if (check_stop(r, t)) break;  // tokens after a stop are dropped
    }
    d.num_cached_tokens = r.num_cached_tokens;
    if (r.is_finished()) {
      d.finish_reason = r.finish_reason();
      d.stop_token = r.stop_token;
      finished.push_back(&r);
    }
    deltas.push_back(std::move(d));
  }
  for (Request* r : finished) {
    release(*r);
    const std::string id = r->request_id;  // the key must outlive the erased element
    requests_.erase(id);
  }
  graveyard_.clear();
  return deltas;
}

bool Scheduler::has_unfinished() const {
  return !waiting_.empty() || !running_.empty() || !pending_deltas_.empty();
}

const Request* Scheduler::find_request(const std::string& request_id) const {
  auto it = requests_.find(request_id);
  return it == requests_.end() ? nullptr : it->second.get();
}

SchedulerStats Scheduler::stats() const {
  SchedulerStats s;
  s.num_running = num_running();
  s.num_waiting = num_waiting();
  s.kv_usage = kv_.usage();
  s.prefix_cache_queries = kv_.prefix_cache_stats().queries;
  s.prefix_cache_hits = kv_.prefix_cache_stats().hits;
  s.num_preemptions = num_preemptions_;
  return s;
}

}  // namespace fastlm::sched
