#pragma once
// One generation request as the scheduler sees it: token ids, sampling parameters and progress.
// Text, chat templates and detokenization live in Python; only ids cross into C++.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "sched/pooling_params.h"
#include "sched/sampling_params.h"

namespace fastlm::sched {

enum class RequestStatus : uint8_t {
  kWaiting,    // never scheduled yet
  kRunning,    // holds KV blocks; scheduled every step while it has budget
  kPreempted,  // blocks freed; back in the waiting queue, to be recomputed from token 0
  kFinishedStopped,
  kFinishedLength,
  kFinishedAborted,
};

enum class FinishReason : uint8_t { kStop, kLength, kAbort };

// The finish reason a status stands for; nullopt while the request is not finished.
std::optional<FinishReason> finish_reason_of(RequestStatus status);
// "stop", "length", "abort" (OpenAI's finish_reason strings).
const char* finish_reason_name(FinishReason reason);
const char* request_status_name(RequestStatus status);

struct Request {
  std::string request_id;
  std::vector<int32_t> prompt_token_ids;
  std::vector<int32_t> output_token_ids;
  SamplingParams params;
  int priority = 0;          // kPriority policy: lower value is served first
  uint64_t arrival_seq = 0;  // set by Scheduler::add_request; breaks ties, orders FCFS
  double arrival_time = 0.0;
  RequestStatus status = RequestStatus::kWaiting;
  // Tokens [0, num_computed_tokens) have their KV in the request's blocks.
  int num_computed_tokens = 0;
  // Prefix-cache hit length (tokens) at the first schedule; kept across preemptions.
  int num_cached_tokens = 0;
  int num_preemptions = 0;
  std::optional<int32_t> stop_token;  // the EOS / stop token id that finished the request
  // vLLM's cache_salt: an extra key of the first block's hash (and so, by chaining, of every
  // block's), so requests with different salts never share prefix blocks. Empty = none.
  std::string cache_salt;
  // Set for a pooling request: prefill only, never sampled; the scheduler runs its whole prompt
  // in one step (never chunked) and finishes it there.
  std::optional<PoolingParams> pooling;
  // Encoder-decoder requests (Whisper): the first num_encoder_tokens prompt tokens are
  // placeholders for the encoder's output (its cross-attention K/V slots). Like a pooling
  // prompt, the prompt is scheduled whole in one step (the encoder is never chunked) and takes
  // no prefix-cache hit; the encoder's work counts against the token budget.
  int num_encoder_tokens = 0;

  int num_prompt_tokens() const { return static_cast<int>(prompt_token_ids.size()); }
  int num_output_tokens() const { return static_cast<int>(output_token_ids.size()); }
  int num_tokens() const { return num_prompt_tokens() + num_output_tokens(); }
  // Token i of prompt + output.
  int32_t token_at(int i) const {
    return i < num_prompt_tokens() ? prompt_token_ids[i]
                                   : output_token_ids[i - num_prompt_tokens()];
  }
  bool is_pooling() const { return pooling.has_value(); }
  bool has_encoder() const { return num_encoder_tokens > 0; }
  // Scheduled whole in one step, without a prefix-cache hit.
  bool is_unchunked() const { return is_pooling() || has_encoder(); }
  bool is_finished() const { return finish_reason_of(status).has_value(); }
  std::optional<FinishReason> finish_reason() const { return finish_reason_of(status); }
};

}  // namespace fastlm::sched
