#include "engine/token_bitmasks.h"

#include <utility>

namespace fastlm::engine {

void TokenBitmasks::put(const std::string& request_id, int step, std::vector<int32_t> words) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    Slot& slot = slots_[request_id];
    slot.step = step;
    slot.words = std::move(words);
  }
  cv_.notify_all();
}

bool TokenBitmasks::take(const std::string& request_id, int step,
                         std::chrono::steady_clock::time_point deadline,
                         std::vector<int32_t>& out) {
  std::unique_lock<std::mutex> lk(mu_);
  auto ready = [&] {
    auto it = slots_.find(request_id);
    return it != slots_.end() && it->second.step == step;
  };
  if (!cv_.wait_until(lk, deadline, ready)) return false;
  Slot& slot = slots_[request_id];
  out = std::move(slot.words);
  slot.words.clear();
  slot.step = -1;
  return true;
}

void TokenBitmasks::erase(const std::string& request_id) {
  std::lock_guard<std::mutex> lk(mu_);
  slots_.erase(request_id);
}

}  // namespace fastlm::engine
