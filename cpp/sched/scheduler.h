#pragma once
// Continuous-batching scheduler (vLLM v1 style): no prefill/decode phases. Every step each
// scheduled request's num_computed_tokens catches up with its tokens, under a token budget and
// a sequence cap; long prompts are split across steps (chunked prefill). When KV blocks run out
// the lowest-priority running request is preempted and later recomputed, never dropped.
// Pooling requests (Request::pooling) are prefill only: admitted only with room for their whole
// prompt, computed in one step and finished in that step's update, never sampled.
// Single-threaded: the engine thread owns it.
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "sched/kv_cache_manager.h"
#include "sched/request.h"

namespace fastlm::sched {

enum class SchedulingPolicy : uint8_t {
  kFcfs,      // arrival order; the most recently admitted running request is preempted first
  kPriority,  // lower Request::priority first, then arrival; preempts the largest pair
};

struct SchedulerConfig {
  int max_num_seqs = 256;
  int max_num_batched_tokens = 2048;  // token budget per step
  int max_model_len = 0;              // prompt + output tokens, at most
  int block_size = 16;
  int num_blocks = 0;
  bool enable_prefix_caching = true;
  SchedulingPolicy policy = SchedulingPolicy::kFcfs;
  std::vector<int32_t> eos_token_ids;  // ignored per request with params.ignore_eos
};

struct ScheduledRequest {
  Request* request = nullptr;
  int num_computed_before = 0;  // request->num_computed_tokens when scheduled
  int num_tokens = 0;           // tokens [num_computed_before, +num_tokens) run this step
  // After this step every known token is computed, so the runner samples one new token (from
  // the logits of the last scheduled position). False for a prefill chunk that is not the last.
  bool samples = false;
  const std::vector<int32_t>* block_table = nullptr;  // covers num_computed_before + num_tokens
};

// Valid (its pointers included) until the matching update_from_output() returns.
struct SchedulerOutput {
  std::vector<ScheduledRequest> scheduled;  // running ones first, then newly admitted
  int total_num_tokens = 0;
  std::vector<std::string> preempted_ids;  // preempted this step (their blocks are freed)
};

// What changed for one request in a step.
struct RequestDelta {
  std::string request_id;
  std::vector<int32_t> new_token_ids;
  std::optional<FinishReason> finish_reason;
  std::optional<int32_t> stop_token;  // EOS or stop token id that finished it
  int num_cached_tokens = 0;          // prefix-cache hit at first schedule
};

struct SchedulerStats {
  int num_running = 0;
  int num_waiting = 0;
  double kv_usage = 0.0;              // fraction of KV blocks in use
  uint64_t prefix_cache_queries = 0;  // tokens
  uint64_t prefix_cache_hits = 0;     // tokens
  uint64_t num_preemptions = 0;       // since start
};

class Scheduler {
 public:
  // Throws InvalidArgument when the config is inconsistent (including a KV cache too small for
  // one max_model_len sequence: such a request could never run, even alone).
  explicit Scheduler(SchedulerConfig config);

  // Queues a request (status kWaiting); sets its arrival_seq. Throws InvalidArgument for a
  // duplicate id, an empty prompt, a prompt longer than max_model_len or max_tokens < 1.
  // A prompt + max_tokens beyond max_model_len is admitted and stops at max_model_len (length).
  void add_request(std::unique_ptr<Request> request);

  // Finishes a waiting or running request as kFinishedAborted and frees its blocks at once.
  // Its delta (finish_reason kAbort) is returned by the next update_from_output(), which the
  // engine runs while has_unfinished() (true while such a delta is pending). Returns false for
  // an unknown or already finished id.
  bool abort_request(const std::string& request_id);

  SchedulerOutput schedule();

  // sampled[i]: the tokens sampled for output.scheduled[i] (one, normally); empty exactly when
  // that request's `samples` is false. Advances num_computed_tokens, caches newly full blocks,
  // appends tokens and runs the stop checks; finished requests free their blocks and are
  // forgotten. Returns a delta for every request that got tokens or finished (aborts first).
  std::vector<RequestDelta> update_from_output(const SchedulerOutput& output,
                                               const std::vector<std::vector<int32_t>>& sampled);

  bool has_unfinished() const;
  int num_running() const { return static_cast<int>(running_.size()); }
  int num_waiting() const { return static_cast<int>(waiting_.size()); }
  // A waiting or running request; nullptr once finished (or unknown).
  const Request* find_request(const std::string& request_id) const;
  const std::vector<int32_t>& block_table(const std::string& request_id) const {
    return kv_.block_ids(request_id);
  }
  sched::KvCacheManager& kv() { return kv_; }
  const sched::KvCacheManager& kv() const { return kv_; }
  const SchedulerConfig& config() const { return config_; }
  SchedulerStats stats() const;

 private:
  // Lower value = served first, preempted last.
  bool ranks_before(const Request& a, const Request& b) const;
  void push_waiting(Request* r);       // by policy (new arrivals)
  void requeue_preempted(Request* r);  // front (fcfs) or by priority
  size_t pick_victim() const;          // index into running_
  void preempt(size_t running_index);
  // Stop checks after appending token t; sets status and stop_token when finished.
  bool check_stop(Request& r, int32_t t) const;
  void release(Request& r);  // a finished request: frees its blocks, leaves running/waiting

  SchedulerConfig config_;
  sched::KvCacheManager kv_;
  std::unordered_map<std::string, std::unique_ptr<Request>> requests_;
  std::deque<Request*> waiting_;
  std::vector<Request*> running_;
  std::vector<RequestDelta> pending_deltas_;  // aborts, returned by the next update
  // Aborted requests, kept alive until the next update (a SchedulerOutput may point at them).
  std::vector<std::unique_ptr<Request>> graveyard_;
  uint64_t next_arrival_seq_ = 0;
  uint64_t num_preemptions_ = 0;
};

}  // namespace fastlm::sched
