#pragma once
// The host side of sampling. The processing itself is an op (ops::sample, ops/sample.h; CPU body
// cpu/sample_cpu.*); this file turns requests' SamplingParams, token histories, generators and
// grammar masks into the op's batched metadata tensors (SamplingBatch: the one place that reads
// requests, validates ids and folds every mask into one allowed-token bitmask per row), and
// keeps the old per-row entry (Sampler::sample) on top of it.
//
// Per row (vLLM v1's order):  grammar bitmask & allowed_token_ids & ~bad_words & ~min_tokens bans
//           -> logit_bias -> repetition / frequency / presence penalties
//           -> greedy argmax (temperature < 1e-5)
//              or  / temperature -> min_p -> top_k -> top_p -> inverse-CDF draw (1 generator step)
#include <atomic>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "ops/sample.h"
#include "sched/sampling_params.h"

namespace fastlm::engine {

// Per-request generator: counter-based SplitMix64, so the state is two integers that can be
// copied or checkpointed. `offset` counts the draws made so far.
struct RandomState {
  uint64_t seed = 0;
  uint64_t offset = 0;

  uint64_t next_u64();
  double next_uniform();  // in [0, 1), 53 random bits
};

struct SampleInput {
  const sched::SamplingParams* params = nullptr;
  const std::vector<int32_t>* prompt_token_ids = nullptr;  // nullptr = empty
  const std::vector<int32_t>* output_token_ids = nullptr;  // nullptr = empty
  RandomState* rng = nullptr;  // required unless the row is greedy; distinct across rows
  // Optional structured-output mask, xgrammar layout: ceil(vocab / 32) words, bit (i % 32) of
  // word i / 32 set = token i allowed. Applied before everything else.
  const int32_t* token_bitmask = nullptr;
};

struct TokenLogprobs {
  int32_t token = 0;
  float logprob = 0.0f;
  int rank = 0;  // 1-based: number of tokens whose logprob is >= this token's
  std::vector<std::pair<int32_t, float>> top;  // descending logprob, lower id first on ties
};

struct SampleResult {
  int32_t token = 0;
  std::optional<TokenLogprobs> logprobs;  // set when params.logprobs >= 0
};

// Builds ops::sample's metadata for one step, row by row, into host buffers reused across steps
// (a device backend uploads them with the step's batch).
class SamplingBatch {
 public:
  // Starts a step of sampling over `vocab` tokens (eos_ids: banned under min_tokens).
  void begin(int vocab, const std::vector<int32_t>* eos_ids);
  // Appends in's row: parameters, penalty tokens (ids checked against the vocabulary), logit
  // bias, the allowed-token mask, and the generator state *in.rng (copied; read it back with
  // rng()). Returns the row index.
  int add(const SampleInput& in);
  // ANDs a grammar mask (SampleInput::token_bitmask layout) into row r's allowed tokens.
  void and_mask(int row, const int32_t* words);
  // The rules that read the logits themselves, on host logits [rows(), vocab] before ops::sample
  // (after the last and_mask): Whisper's timestamp rules (model/whisper_timestamps.h), which see
  // the row after its masks. A no-op when no row asks for them.
  void apply_logit_rules(float* logits);
  // The step's tensors: views of one staging block holding every array (one host-to-device copy
  // for a device backend), valid until the next begin(); and the outputs to fill.
  ops::SamplingTensors& tensors();
  ops::SampleOutputs& outputs();
  int rows() const { return static_cast<int>(temperature_.size()); }
  // After ops::sample: row r's generator (its offset advanced by a random draw), token and
  // logprobs (nullopt when the row asked for none).
  RandomState rng(int row) const;
  int32_t token(int row) const { return tokens_[row]; }
  std::optional<TokenLogprobs> logprobs(int row) const;

 private:
  int vocab_ = 0;
  int words_ = 0;
  const std::vector<int32_t>* eos_ids_ = nullptr;
  std::vector<float> temperature_, top_p_, min_p_, repetition_, frequency_, presence_;
  std::vector<int32_t> top_k_, num_logprobs_, logprobs_mode_, mask_rows_, bitmask_;
  std::vector<int64_t> rng_;
  std::vector<int32_t> penalty_offsets_, penalty_tokens_, penalty_counts_;
  std::vector<int32_t> bias_offsets_, bias_tokens_;
  std::vector<float> bias_values_;
  std::vector<int32_t> tokens_, rank_, top_tokens_;
  std::vector<float> logprob_, top_logprobs_;
  int top_n_ = 0;
  std::vector<int32_t> count_of_;  // per token, all zero between rows
  std::vector<uint8_t> listed_;    // per token, all zero between rows
  struct TimestampRow {
    int row;
    const std::vector<int32_t>* output;
    int32_t timestamp_begin, max_initial_index;
  };
  std::vector<TimestampRow> timestamp_rows_;
  ops::SamplingTensors tensors_;
  std::vector<uint64_t> staging_;  // tensors_' storage (uint64_t: 8-byte aligned base)
  bool staged_ = false;
  ops::SampleOutputs outputs_;
};

class Sampler {
 public:
  explicit Sampler(std::vector<int32_t> eos_token_ids, int vocab_size, uint64_t seed = 0);

  // A request's generator: from `seed` alone when given (reproducible across engines), else the
  // next value of the engine's seed stream. Thread-safe.
  RandomState make_rng(std::optional<uint64_t> seed);

  // Throws InvalidArgument when `params` is out of range for this vocabulary. sample() checks
  // too, but calling this when a request is added rejects just that request.
  void validate(const sched::SamplingParams& params) const;

  // Throws InvalidArgument unless every input is samplable: params valid, a distinct generator
  // for each random row.
  void check_inputs(const std::vector<SampleInput>& inputs) const;

  // logits: [rows, vocab_size], overwritten with the processed logits (masked tokens -inf).
  // inputs[i] describes row i. One ops::sample on the CPU; results do not depend on the
  // thread count. Greedy rows do not advance their generator; random rows advance it by one.
  std::vector<SampleResult> sample(float* logits, int rows, const std::vector<SampleInput>& inputs);

  // Prompt logprobs: row i scores targets[i] under log_softmax(row i), with the top_n best
  // tokens (top_n = 0: none).
  static std::vector<TokenLogprobs> score(const float* logits, int rows, int vocab,
                                          const int32_t* targets, int top_n);

  int vocab_size() const { return vocab_size_; }
  const std::vector<int32_t>& eos_token_ids() const { return eos_token_ids_; }

 private:
  std::vector<int32_t> eos_token_ids_;
  int vocab_size_;
  uint64_t seed_;
  std::atomic<uint64_t> num_rngs_made_{0};
  SamplingBatch batch_;  // sample()'s buffers
};

}  // namespace fastlm::engine
