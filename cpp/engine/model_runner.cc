#include "engine/model_runner.h"

#include <algorithm>

#include "core/status.h"

namespace fastlm::engine {

StepResult ModelRunner::execute(const sched::SchedulerOutput& out,
                                std::unordered_map<std::string, RequestState>& states) {
  bool any_token_types = false;
  for (const sched::ScheduledRequest& s : out.scheduled) {
    any_token_types |= s.request->is_pooling() && s.request->pooling->token_type_boundary >= 0;
  }

  int max_blocks = 1;
  for (const sched::ScheduledRequest& s : out.scheduled) {
    max_blocks = std::max<int>(max_blocks, static_cast<int>(s.block_table->size()));
  }
  builder_.begin(kv_.block_size, max_blocks, any_token_types);
  model::ForwardBatch& b = builder_.batch();

  // Rows of the logits tensor: first the sampling rows, then prompt-logprob rows.
  struct PromptRows {
    size_t sched_index;
    int first_position;  // position p scores prompt token p + 1
    int count;
  };
  std::vector<int> sample_sched;  // scheduled index of each sampling row
  std::vector<int32_t> sample_rows;
  std::vector<PromptRows> prompt_rows;
  std::vector<int32_t> prompt_row_indices;

  for (size_t i = 0; i < out.scheduled.size(); ++i) {
    const sched::ScheduledRequest& s = out.scheduled[i];
    const sched::Request& r = *s.request;
    const int start = s.num_computed_before;
    const int row0 =
        builder_.add_sequence([&r](int pos) { return r.token_at(pos); }, start, s.num_tokens,
                              *s.block_table, r.is_pooling() ? r.pooling->token_type_boundary : -1);
    if (r.has_encoder()) {
      b.num_encoder_slots = r.num_encoder_tokens;
      b.encoder_inputs.push_back(start == 0 ? states.at(r.request_id).encoder_input.data()
                                            : nullptr);
    } else {
      b.encoder_inputs.push_back(nullptr);
    }
    if (s.samples && !r.is_pooling()) {
      sample_sched.push_back(static_cast<int>(i));
      sample_rows.push_back(row0 + s.num_tokens - 1);
    }
    if (r.params.prompt_logprobs >= 0) {
      const RequestState& st = states.at(r.request_id);
      const int num_prompt = r.num_prompt_tokens();
      // Positions whose next token is a prompt token, not yet scored.
      const int first = std::max(start, static_cast<int>(st.prompt_logprobs.size()));
      const int last = std::min(start + s.num_tokens, num_prompt - 1);
      if (first < last) {
        prompt_rows.push_back({i, first, last - first});
        for (int p = first; p < last; ++p) prompt_row_indices.push_back(row0 + (p - start));
      }
    }
  }
  b.logits_indices = sample_rows;
  b.logits_indices.insert(b.logits_indices.end(), prompt_row_indices.begin(),
                          prompt_row_indices.end());

  StepResult result;
  result.sampled.resize(out.scheduled.size());
  result.logprobs.resize(out.scheduled.size());
  result.pooled.resize(out.scheduled.size());
  result.errors.resize(out.scheduled.size());
  if (b.token_ids.empty()) return result;

  if (model_.is_pooling()) {  // the engine admits only pooling requests to pooling models
    Tensor hidden = model_.forward_hidden(b, kv_);
    pool(out, hidden, result);
    return result;
  }
  Tensor logits = model_.forward(b, kv_);
  const int vocab = static_cast<int>(logits.size(1));
  float* rows = logits.data<float>();

  // Prompt logprobs first: sampling modifies its rows in place, these rows are separate anyway.
  size_t offset = sample_rows.size();
  for (const PromptRows& pr : prompt_rows) {
    const sched::ScheduledRequest& s = out.scheduled[pr.sched_index];
    const sched::Request& r = *s.request;
    std::vector<int32_t> targets(pr.count);
    for (int k = 0; k < pr.count; ++k) targets[k] = r.prompt_token_ids[pr.first_position + k + 1];
    std::vector<TokenLogprobs> scored =
        Sampler::score(rows + offset * vocab, pr.count, vocab, targets.data(),
                       std::max(0, r.params.prompt_logprobs));
    RequestState& st = states.at(r.request_id);
    for (auto& t : scored) st.prompt_logprobs.push_back(std::move(t));
    offset += pr.count;
  }

  if (!sample_rows.empty()) {
    std::vector<SampleInput> inputs;
    inputs.reserve(sample_sched.size());
    masks_.resize(std::max(masks_.size(), sample_sched.size()));
    // The forward is done: Python had that long to push each constrained row's mask.
    const auto deadline = std::chrono::steady_clock::now() + bitmask_timeout_;
    for (size_t k = 0; k < sample_sched.size(); ++k) {
      const int i = sample_sched[k];
      sched::Request& r = *out.scheduled[i].request;
      RequestState& st = states.at(r.request_id);
      const std::vector<int32_t>* prompt =
          r.has_encoder() ? &st.decoder_prompt : &r.prompt_token_ids;
      inputs.push_back({&r.params, prompt, &r.output_token_ids, &st.rng});
      if (!r.params.has_grammar) continue;
      const int step = static_cast<int>(r.output_token_ids.size());
      std::vector<int32_t>& mask = masks_[k];
      if (!bitmasks_.take(r.request_id, step, deadline, mask)) {
        result.errors[i] = "the grammar mask for output token " + std::to_string(step) +
                           " did not arrive within " + std::to_string(bitmask_timeout_.count()) +
                           " ms";
        mask.assign((vocab + 31) / 32, 0);  // sample anything; the engine drops it
      }
      inputs.back().token_bitmask = mask.data();
    }
    std::vector<SampleResult> sampled =
        sampler_.sample(rows, static_cast<int>(sample_rows.size()), inputs);
    for (size_t k = 0; k < sample_sched.size(); ++k) {
      const int i = sample_sched[k];
      result.sampled[i].push_back(sampled[k].token);
      if (sampled[k].logprobs) result.logprobs[i].push_back(std::move(*sampled[k].logprobs));
    }
  }
  return result;
}

}  // namespace fastlm::engine
