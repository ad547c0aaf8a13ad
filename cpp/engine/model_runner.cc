#include "engine/model_runner.h"

#include <algorithm>

#include "core/status.h"
#include "ops/backend.h"
#include "ops/sample.h"

namespace fastlm::engine {

StepResult ModelRunner::execute(const sched::SchedulerOutput& out, RequestStates& states) {
  model::ForwardBatch& b = input_.update(out, states);
  const std::vector<int>& sample_sched = input_.sample_sched();

  StepResult result;
  result.sampled.resize(out.scheduled.size());
  result.logprobs.resize(out.scheduled.size());
  result.pooled.resize(out.scheduled.size());
  result.errors.resize(out.scheduled.size());
  if (b.num_tokens() == 0) return result;

  if (model_.is_pooling()) {  // the engine admits only pooling requests to pooling models
    Tensor hidden = model_.forward_hidden(b, kv_);
    pool(out, hidden, result);
    return result;
  }
  Tensor logits = model_.forward(b, kv_);
  const int vocab = static_cast<int>(logits.size(1));
  float* rows = logits.data<float>();

  // Prompt logprobs first: sampling modifies its rows in place, these rows are separate anyway.
  for (const PromptLogprobRows& pr : input_.prompt_rows()) {
    const sched::ScheduledRequest& s = out.scheduled[pr.sched_index];
    const sched::Request& r = *s.request;
    std::vector<int32_t> targets(pr.count);
    for (int k = 0; k < pr.count; ++k) targets[k] = r.prompt_token_ids[pr.first_position + k + 1];
    std::vector<TokenLogprobs> scored =
        Sampler::score(rows + int64_t{pr.first_logits_row} * vocab, pr.count, vocab, targets.data(),
                       std::max(0, r.params.prompt_logprobs));
    RequestState& st = states.at(r.request_id);
    for (auto& t : scored) st.prompt_logprobs.push_back(std::move(t));
  }

  if (!sample_sched.empty()) {
    SamplingBatch& sb = input_.sampling(out, states, vocab, sampler_.eos_token_ids());
    // The forward is done: Python had that long to push each constrained row's mask.
    const auto deadline = std::chrono::steady_clock::now() + bitmask_timeout_;
    for (size_t k = 0; k < sample_sched.size(); ++k) {
      const int i = sample_sched[k];
      const sched::Request& r = *out.scheduled[i].request;
      if (!r.params.has_grammar) continue;
      const int step = static_cast<int>(r.output_token_ids.size());
      if (!bitmasks_.take(r.request_id, step, deadline, mask_)) {
        result.errors[i] = "the grammar mask for output token " + std::to_string(step) +
                           " did not arrive within " + std::to_string(bitmask_timeout_.count()) +
                           " ms";
        continue;  // sample anything; the engine drops it
      }
      sb.and_mask(static_cast<int>(k), mask_.data());
    }
    sb.apply_logit_rules(rows);  // host rules (Whisper timestamps): the CPU backend's logits
    const int64_t n = static_cast<int64_t>(sample_sched.size());
    Tensor sample_rows = Tensor::view(rows, {n, vocab}, DType::kF32, nullptr, logits.device());
    ops::sample(ops::default_context(logits.device()), sample_rows, sb.tensors(), sb.outputs());
    input_.commit_sampling(out, states);
    for (size_t k = 0; k < sample_sched.size(); ++k) {
      const int i = sample_sched[k];
      result.sampled[i].push_back(sb.token(static_cast<int>(k)));
      if (std::optional<TokenLogprobs> lp = sb.logprobs(static_cast<int>(k)))
        result.logprobs[i].push_back(std::move(*lp));
    }
  }
  return result;
}

}  // namespace fastlm::engine
