#pragma once
// Token sampler: turns one float32 logits row per sequence into a token (and logprobs), following
// vLLM v1's order of processing. Rows are independent and each request draws only from its own
// generator, so a seeded request yields the same tokens whatever else shares the batch.
//
// Per row:  grammar bitmask -> allowed_token_ids -> bad_words -> min_tokens -> logit_bias
//           -> repetition / frequency / presence penalties
//           -> greedy argmax (temperature < 1e-5)
//              or  / temperature -> min_p -> top_k -> top_p -> inverse-CDF draw (1 generator step)
#include <atomic>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

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

class Sampler {
 public:
  explicit Sampler(std::vector<int32_t> eos_token_ids, int vocab_size, uint64_t seed = 0);

  // A request's generator: from `seed` alone when given (reproducible across engines), else the
  // next value of the engine's seed stream. Thread-safe.
  RandomState make_rng(std::optional<uint64_t> seed);

  // Throws InvalidArgument when `params` is out of range for this vocabulary. sample() checks
  // too, but calling this when a request is added rejects just that request.
  void validate(const sched::SamplingParams& params) const;

  // logits: [rows, vocab_size], overwritten with the processed logits (masked tokens -inf).
  // inputs[i] describes row i. Parallel across rows (OpenMP); results do not depend on the
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
};

}  // namespace fastlm::engine
