#pragma once
// The persistent input batch (vLLM v1's InputBatch + BlockTable): one row per request scheduled
// this step, kept across steps. A request that stays scheduled keeps its row; its block table
// grows in place by the blocks allocated since the last step (never re-copied whole). Requests
// that left (finished, preempted, or not scheduled this step) give up their rows and later rows
// move up, keeping their order; new requests take rows at the end. The forward runs the rows in
// row order; every index array of the step lands in the BatchBuilder's one staging area.
//
//   step t:    rows  [ A | B | C ]          C preempted, D admitted, B got a new block
//   step t+1:  rows  [ A | B+ | D ]         (A untouched, B appended, D's table set once)
//
// Logits rows of a step: first one sampling row per request that samples (in row order), then
// the prompt-logprob rows (positions whose next prompt token is not yet scored).
//
// Sampling: each row holds its request's generator; sampling() builds the step's batched
// metadata for ops::sample from the sampling rows (generators included) and commit_sampling()
// takes the advanced generators back into the rows and into RequestState, the copy at rest that a
// request's next row starts from (after a preemption, or a step it was not scheduled).
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/sampler.h"
#include "model/batch_builder.h"
#include "sched/scheduler.h"

namespace fastlm::engine {

// Per-request state kept between steps (engine thread only).
struct RequestState {
  RandomState rng;  // at rest: the live one is in the request's InputBatch row
  // Prompt logprobs scored so far (entry i scores prompt token i+1); recomputation after a
  // preemption does not score them twice.
  std::vector<TokenLogprobs> prompt_logprobs;
  bool prompt_logprobs_delivered = false;
  // Encoder-decoder requests: the encoder input (kept for recomputation after a preemption)
  // and the decoder prompt (what penalties see as the prompt, without the encoder's slots).
  std::vector<float> encoder_input;
  std::vector<int32_t> decoder_prompt;
};

using RequestStates = std::unordered_map<std::string, RequestState>;

// Logits rows [first_logits_row, + count) score prompt tokens first_position + 1 ... of the
// scheduled request sched_index (position p's logits score prompt token p + 1).
struct PromptLogprobRows {
  size_t sched_index = 0;
  int first_position = 0;
  int count = 0;
  int first_logits_row = 0;
};

class InputBatch {
 public:
  // Sizes the staging area for the engine's limits (it grows on demand beyond them).
  InputBatch(int block_size, int max_num_batched_tokens, int max_num_seqs, int max_model_len);

  // Brings the rows in line with `out` (removing, condensing, adding, appending blocks) and
  // builds the step's ForwardBatch. `states` holds every scheduled request's state.
  model::ForwardBatch& update(const sched::SchedulerOutput& out, const RequestStates& states);

  // The step's sampling metadata, one row per sample_sched() entry, over `vocab` tokens
  // (eos_ids: banned under min_tokens). Valid until the next sampling().
  SamplingBatch& sampling(const sched::SchedulerOutput& out, const RequestStates& states, int vocab,
                          const std::vector<int32_t>& eos_ids);
  // After ops::sample ran on sampling()'s batch: the rows (and `states`) keep the advanced
  // generators.
  void commit_sampling(const sched::SchedulerOutput& out, RequestStates& states);

  int num_rows() const { return static_cast<int>(rows_.size()); }
  // The row (= sequence index in the forward) of scheduled request i.
  int row_of(size_t sched_index) const { return row_of_sched_[sched_index]; }
  // Logits row k (k < size) is the sampling row of scheduled request sample_sched()[k].
  const std::vector<int>& sample_sched() const { return sample_sched_; }
  const std::vector<PromptLogprobRows>& prompt_rows() const { return prompt_rows_; }
  const model::BatchBuilder& builder() const { return builder_; }
  model::ForwardBatch& batch() { return builder_.batch(); }

 private:
  struct Row {
    uint64_t arrival_seq = 0;  // the request's identity (unique per scheduler)
    int num_preemptions = 0;   // a recomputed request starts a fresh row
    RandomState rng;           // the live generator
  };

  int block_size_;
  model::BatchBuilder builder_;
  std::vector<Row> rows_;
  // Per step (buffers reused).
  std::unordered_map<uint64_t, int> sched_of_key_;
  std::vector<int> row_of_sched_, sched_of_row_;
  std::vector<int> sample_sched_;
  std::vector<PromptLogprobRows> prompt_rows_;
  SamplingBatch sampling_;
};

}  // namespace fastlm::engine
