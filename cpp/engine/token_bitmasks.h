#pragma once
// Grammar masks of constrained requests (SamplingParams::has_grammar), pushed by Python.
//
// The mask for a request's k-th sampled token (step k) depends on its first k tokens only, so
// Python computes it from the token of step k-1 while the forward that samples step k runs; the
// runner waits for it (bounded) just before sampling. One slot per request: Python cannot
// compute step k+1 before step k was sampled, so a new mask always replaces a consumed one.
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace fastlm::engine {

class TokenBitmasks {
 public:
  // Stores `words` (the sampler's bitmask layout) as the request's mask for `step`.
  void put(const std::string& request_id, int step, std::vector<int32_t> words);
  // Moves the mask for (request_id, step) into `out`, waiting until `deadline` for it to come.
  // False when it did not come in time.
  bool take(const std::string& request_id, int step, std::chrono::steady_clock::time_point deadline,
            std::vector<int32_t>& out);
  void erase(const std::string& request_id);

 private:
  struct Slot {
    int step = -1;
    std::vector<int32_t> words;
  };
  std::mutex mu_;
  std::condition_variable cv_;
  std::unordered_map<std::string, Slot> slots_;
};

}  // namespace fastlm::engine
