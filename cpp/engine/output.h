#pragma once
// What crosses from the engine thread to Python: per-request deltas, merged when Python lags.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/sampler.h"

namespace fastlm::engine {

struct RequestOutputDelta {
  std::string request_id;
  std::vector<int32_t> new_token_ids;
  // One entry per new token when the request asked for logprobs.
  std::vector<TokenLogprobs> logprobs;
  // Prompt logprobs (entry i scores prompt token i+1), delivered once the prompt is computed.
  std::vector<TokenLogprobs> prompt_logprobs;
  bool finished = false;
  std::string finish_reason;  // "stop" | "length" | "abort" when finished
  std::optional<int32_t> stop_token;
  int num_prompt_tokens = 0;
  int num_cached_tokens = 0;
  std::string error;  // set when the engine failed while serving this request
  // Pooling requests: the pooled output (row-major float32) and its shape, on the finished delta.
  std::vector<float> pooled;
  std::vector<int64_t> pooled_shape;

  // Appends a later delta of the same request.
  void merge(RequestOutputDelta&& later);
};

}  // namespace fastlm::engine
