#include "cpu/batch_invariant.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace fastlm::cpu {

namespace {

bool initial_batch_invariant() {
  const char* env = std::getenv("FASTLM_BATCH_INVARIANT");
  return env == nullptr || *env == '\0' || std::strcmp(env, "0") != 0;
}

std::atomic<bool>& flag() {
  static std::atomic<bool> on{initial_batch_invariant()};
  return on;
}

}  // namespace

bool batch_invariant() { return flag().load(std::memory_order_relaxed); }

void set_batch_invariant(bool on) { flag().store(on, std::memory_order_relaxed); }

}  // namespace fastlm::cpu
