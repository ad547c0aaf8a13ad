#pragma once
// Per-request sampling parameters, as the C++ side sees them. Names and defaults follow
// vLLM's SamplingParams; Python validates and converts (stop strings, bad_words text) before
// they get here.
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

namespace fastlm::sched {

// What a sampled token's logprobs report (vLLM's --logprobs-mode): log_softmax of the model's
// raw logits (the default, as vLLM), or of the logits after masks, bias, penalties, temperature
// and top-k/top-p/min-p; or those logits themselves, unnormalized. Ranks and top-N order by the
// reported value either way. Prompt logprobs are always raw log-probabilities.
enum class LogprobsMode : uint8_t {
  kRawLogprobs,
  kProcessedLogprobs,
  kRawLogits,
  kProcessedLogits
};

struct SamplingParams {
  int n = 1;
  float temperature = 1.0f;  // 0 = greedy
  float top_p = 1.0f;
  int top_k = 0;  // 0 or -1 = off
  float min_p = 0.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  float repetition_penalty = 1.0f;
  std::optional<uint64_t> seed;
  int max_tokens = 16;
  int min_tokens = 0;
  bool ignore_eos = false;
  std::vector<int32_t> stop_token_ids;
  std::vector<std::pair<int32_t, float>> logit_bias;
  std::vector<int32_t> allowed_token_ids;       // empty = all
  std::vector<std::vector<int32_t>> bad_words;  // token sequences never to complete
  // Banned while the output is empty (Whisper's begin_suppress_tokens: no leading blank or EOT).
  std::vector<int32_t> begin_suppress_tokens;
  // Whisper's timestamp rules (model/whisper_timestamps.h) when >= 0: the id of <|0.00|>; the
  // first timestamp is at most <|max_initial_timestamp_index * 0.02|>.
  int32_t timestamp_begin = -1;
  int32_t max_initial_timestamp_index = 50;
  int logprobs = -1;         // -1 = none; N >= 0: sampled token's logprob + top-N
  int prompt_logprobs = -1;  // -1 = none; N >= 0: for every prompt token
  LogprobsMode logprobs_mode = LogprobsMode::kRawLogprobs;
  // Structured output: every sampled token waits for a grammar bitmask from Python
  // (engine::TokenBitmasks); the C++ side never sees the grammar itself.
  bool has_grammar = false;
};

}  // namespace fastlm::sched
