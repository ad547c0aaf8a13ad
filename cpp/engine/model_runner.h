#pragma once
// Runs one SchedulerOutput: updates the persistent InputBatch (which builds the step's flat
// forward batch), runs the model once, and samples the requests that reached the end of their
// known tokens.
#include <chrono>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/input_batch.h"
#include "engine/sampler.h"
#include "engine/token_bitmasks.h"
#include "model/kv_storage.h"
#include "model/model.h"
#include "sched/scheduler.h"

namespace fastlm::engine {

// A pooling request's output: row-major float32 data of shape [hidden] / [num_labels], or
// [num_tokens, hidden] for ALL pooling.
struct PooledOutput {
  std::vector<float> data;
  std::vector<int64_t> shape;
};

struct StepResult {
  // Per scheduled request, in SchedulerOutput order.
  std::vector<std::vector<int32_t>> sampled;
  std::vector<std::vector<TokenLogprobs>> logprobs;
  std::vector<PooledOutput> pooled;  // filled for pooling requests only
  // Non-empty: the request failed this step (its grammar mask did not come in time); its
  // sampled token is meaningless and the engine aborts it.
  std::vector<std::string> errors;
};

class ModelRunner {
 public:
  ModelRunner(model::Model& model, model::KvStorage& kv, Sampler& sampler, TokenBitmasks& bitmasks,
              std::chrono::milliseconds bitmask_timeout, const sched::SchedulerConfig& limits)
      : model_(model),
        kv_(kv),
        sampler_(sampler),
        input_(limits.block_size, limits.max_num_batched_tokens, limits.max_num_seqs,
               limits.max_model_len),
        bitmasks_(bitmasks),
        bitmask_timeout_(bitmask_timeout) {}

  StepResult execute(const sched::SchedulerOutput& out, RequestStates& states);

 private:
  // Pooling models (model_runner_pooling.cc): pools each scheduled request's rows of `hidden`
  // as its PoolingParams say, runs the head once for all that want it.
  void pool(const sched::SchedulerOutput& out, const Tensor& hidden, StepResult& result);

  model::Model& model_;
  model::KvStorage& kv_;
  Sampler& sampler_;
  InputBatch input_;  // persists across steps
  TokenBitmasks& bitmasks_;
  std::chrono::milliseconds bitmask_timeout_;
  std::vector<int32_t> mask_;  // a grammar mask being folded in, reused across steps
};

}  // namespace fastlm::engine
