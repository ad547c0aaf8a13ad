#pragma once
// Turns one SchedulerOutput into one flat forward batch (token ids, positions, KV slots, block
// tables), runs the model once, and samples the requests that reached the end of their known
// tokens.
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/sampler.h"
#include "engine/scheduler.h"
#include "kv/kv_storage.h"
#include "model/model.h"

namespace fastlm::engine {

// Per-request state the runner keeps between steps (engine thread only).
struct RequestState {
  RandomState rng;
  // Prompt logprobs scored so far (entry i scores prompt token i+1); recomputation after a
  // preemption does not score them twice.
  std::vector<TokenLogprobs> prompt_logprobs;
  bool prompt_logprobs_delivered = false;
};

struct StepResult {
  // Per scheduled request, in SchedulerOutput order.
  std::vector<std::vector<int32_t>> sampled;
  std::vector<std::vector<TokenLogprobs>> logprobs;
};

class ModelRunner {
 public:
  ModelRunner(model::Model& model, kv::KvStorage& kv, Sampler& sampler)
      : model_(model), kv_(kv), sampler_(sampler) {}

  StepResult execute(const SchedulerOutput& out,
                     std::unordered_map<std::string, RequestState>& states);

 private:
  model::Model& model_;
  kv::KvStorage& kv_;
  Sampler& sampler_;
  model::ForwardBatch batch_;  // reused across steps
};

}  // namespace fastlm::engine
