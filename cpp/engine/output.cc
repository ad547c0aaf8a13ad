#include "engine/output.h"

#include <iterator>

namespace fastlm::engine {

void RequestOutputDelta::merge(RequestOutputDelta&& later) {
  new_token_ids.insert(new_token_ids.end(), later.new_token_ids.begin(), later.new_token_ids.end());
  logprobs.insert(logprobs.end(), std::make_move_iterator(later.logprobs.begin()),
                  std::make_move_iterator(later.logprobs.end()));
  if (!later.prompt_logprobs.empty()) prompt_logprobs = std::move(later.prompt_logprobs);
  if (later.finished) {
    finished = true;
    finish_reason = std::move(later.finish_reason);
    stop_token = later.stop_token;
  }
  if (!later.error.empty()) error = std::move(later.error);
  if (!later.pooled_shape.empty()) {
    pooled = std::move(later.pooled);
    pooled_shape = std::move(later.pooled_shape);
  }
  num_prompt_tokens = later.num_prompt_tokens;
  num_cached_tokens = later.num_cached_tokens;
}

}  // namespace fastlm::engine
