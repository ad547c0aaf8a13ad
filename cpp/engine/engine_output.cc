// The engine's output queue: deltas merged per request until Python polls, woken by an eventfd.
#include <unistd.h>

#include "core/status.h"
#include "engine/engine.h"

namespace fastlm::engine {

void Engine::push_outputs(std::vector<RequestOutputDelta>&& deltas) {
  if (deltas.empty()) return;
  {
    std::lock_guard<std::mutex> lk(out_mu_);
    for (RequestOutputDelta& d : deltas) {
      auto it = outbox_index_.find(d.request_id);
      if (it == outbox_index_.end()) {
        outbox_index_[d.request_id] = outbox_.size();
        outbox_.push_back(std::move(d));
      } else {
        outbox_[it->second].merge(std::move(d));
      }
    }
  }
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = write(event_fd_, &one, sizeof(one));
}

std::vector<RequestOutputDelta> Engine::poll_outputs() {
  uint64_t value;
  [[maybe_unused]] ssize_t n = read(event_fd_, &value, sizeof(value));  // clear the wakeup
  std::lock_guard<std::mutex> lk(out_mu_);
  std::vector<RequestOutputDelta> out;
  out.swap(outbox_);
  outbox_index_.clear();
  if (!fatal_error_.empty() && out.empty()) throw Error("engine failed: " + fatal_error_);
  return out;
}

bool Engine::failed() {
  std::lock_guard<std::mutex> lk(out_mu_);
  return !fatal_error_.empty();
}

}  // namespace fastlm::engine
