#pragma once
// CPU body of ops::sample (ops/sample.h): one float32 logits row per sequence in, one token (and
// the requested logprobs) out, following vLLM v1's order of processing. Rows are independent and
// each draws only from its own generator state, so a seeded row yields the same tokens whatever
// else shares the batch, and results do not depend on the thread count.
//
// Per row:  allowed-token bitmask (grammar, allowed_token_ids and every ban folded in)
//           -> logit_bias -> repetition / frequency / presence penalties
//           -> greedy argmax (temperature < kGreedyTemperature)
//              or  / temperature -> min_p -> top_k -> top_p -> inverse-CDF draw (1 generator step)
#include <cstdint>

namespace fastlm::cpu {

inline constexpr float kGreedyTemperature = 1e-5f;  // vLLM's _SAMPLING_EPS

// The per-request generator: counter-based SplitMix64 over (seed, offset). Draw k (k = 1, 2...)
// is mix64(seed + k * golden), so the state is two integers a device can hold per row.
uint64_t rng_draw(uint64_t seed, uint64_t offset);  // the draw after `offset` draws
uint64_t mix64(uint64_t z);

// What ops::sample's logprobs report (sched::LogprobsMode, as int32).
enum class SampleLogprobsMode : int32_t {
  kRawLogprobs = 0,
  kProcessedLogprobs = 1,
  kRawLogits = 2,
  kProcessedLogits = 3
};

// Raw pointers of ops::sample's tensors; see ops/sample.h for their meaning.
struct SampleArgs {
  float* logits = nullptr;
  int64_t rows = 0, vocab = 0;
  const float* temperature = nullptr;
  const int32_t* top_k = nullptr;
  const float* top_p = nullptr;
  const float* min_p = nullptr;
  const float* repetition_penalty = nullptr;
  const float* frequency_penalty = nullptr;
  const float* presence_penalty = nullptr;
  int64_t* rng = nullptr;  // [rows, 2]: seed, offset
  const int32_t* num_logprobs = nullptr;
  const int32_t* logprobs_mode = nullptr;
  const int32_t* mask_rows = nullptr;
  const int32_t* bitmask = nullptr;
  int64_t mask_words = 0;
  const int32_t* penalty_offsets = nullptr;
  const int32_t* penalty_tokens = nullptr;
  const int32_t* penalty_counts = nullptr;
  const int32_t* bias_offsets = nullptr;
  const int32_t* bias_tokens = nullptr;
  const float* bias_values = nullptr;
  int32_t* tokens = nullptr;
  float* logprob = nullptr;
  int32_t* rank = nullptr;
  int32_t* top_tokens = nullptr;
  float* top_logprobs = nullptr;
  int64_t top_n = 0;
};

void sample(const SampleArgs& a);

// Prompt logprobs: row i scores targets[i] under log_softmax(row i): logprob[i], rank[i] and the
// top_n best tokens (top_tokens / top_logprobs [rows, top_n], descending, lower id on ties).
void score(const float* logits, int64_t rows, int64_t vocab, const int32_t* targets, int64_t top_n,
           float* logprob, int32_t* rank, int32_t* top_tokens, float* top_logprobs);

}  // namespace fastlm::cpu
