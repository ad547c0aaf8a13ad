#pragma once
// A Backend owns one device's policy: where its memory comes from (allocator), how much there
// is (memory info, KV-cache sizing), which dtype `dtype=auto` computes in, and its threads.
// The CPU backend is cpu/cpu_backend.h; a CUDA backend implements the same interface and is
// returned by ops::backend(Device::kCUDA) (ops/backend.h), the one place that lists backends.
#include <cstdint>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "core/device.h"
#include "core/dtype.h"

namespace fastlm {

struct MemoryInfo {
  int64_t total_bytes = 0;
  int64_t available_bytes = 0;  // 0 when unknown
};

// What the engine asks the backend when it sizes the KV cache.
struct KvBudgetRequest {
  int64_t explicit_bytes = 0;  // > 0: the user's --kv-cache-memory, taken as is
  double fraction = 0.0;       // else this fraction of the memory the backend can spare
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual Allocator& allocator() = 0;
  virtual MemoryInfo memory_info() const = 0;
  // Bytes for the KV cache (validates the fraction; throws InvalidArgument).
  virtual int64_t kv_cache_budget(const KvBudgetRequest& request) const = 0;
  // The dtype weights are computed in and KV stored in, for `requested` ("auto", "float32",
  // "bfloat16", "float16") and a checkpoint stored as `checkpoint`. Appends a note for each
  // decision the start-up output should report.
  virtual DType resolve_dtype(const std::string& requested, DType checkpoint,
                              std::vector<std::string>* notes) const = 0;
  virtual int num_threads() const = 0;
  virtual void set_num_threads(int threads) = 0;
  // Waits for all work queued on `stream` (no-op on CPU).
  virtual void synchronize(void* stream) = 0;
};

}  // namespace fastlm
