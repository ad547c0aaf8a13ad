#pragma once
// Turns one SchedulerOutput into one flat forward batch (token ids, positions, KV slots, block
// tables), runs the model once, and samples the requests that reached the end of their known
// tokens.
#include <chrono>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/sampler.h"
#include "model/batch_builder.h"
#include "engine/token_bitmasks.h"
#include "model/kv_storage.h"
#include "model/model.h"
#include "sched/scheduler.h"

namespace fastlm::engine {

// Per-request state the runner keeps between steps (engine thread only).
struct RequestState {
  RandomState rng;
  // Prompt logprobs scored so far (entry i scores prompt token i+1); recomputation after a
  // preemption does not score them twice.
  std::vector<TokenLogprobs> prompt_logprobs;
  bool prompt_logprobs_delivered = false;
  // Encoder-decoder requests: the encoder input (kept for recomputation after a preemption)
  // and the decoder prompt (what penalties see as the prompt, without the encoder's slots).
  std::vector<float> encoder_input;
  std::vector<int32_t> decoder_prompt;
};

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
              std::chrono::milliseconds bitmask_timeout)
      : model_(model),
        kv_(kv),
        sampler_(sampler),
        bitmasks_(bitmasks),
        bitmask_timeout_(bitmask_timeout) {}

  StepResult execute(const sched::SchedulerOutput& out,
                     std::unordered_map<std::string, RequestState>& states);

 private:
  // Pooling models (model_runner_pooling.cc): pools each scheduled request's rows of `hidden`
  // as its PoolingParams say, runs the head once for all that want it.
  void pool(const sched::SchedulerOutput& out, const Tensor& hidden, StepResult& result);

  model::Model& model_;
  model::KvStorage& kv_;
  Sampler& sampler_;
  model::BatchBuilder builder_;  // its buffers are reused across steps
  TokenBitmasks& bitmasks_;
  std::chrono::milliseconds bitmask_timeout_;
  std::vector<std::vector<int32_t>> masks_;  // per sampling row, reused across steps
};

}  // namespace fastlm::engine
