#pragma once
// The CPU backend: host memory (aligned allocator), memory info from /proc/meminfo, KV-cache
// sizing, the dtype=auto decision from the CPU's instruction set, and OpenMP threads.
// (The OpenMP wait policy, GOMP_SPINCOUNT, is read when libgomp loads, so the server CLI sets
// the environment before the runtime loads; the policy itself is documented there.)
#include "core/backend.h"
#include "core/exec_context.h"

namespace fastlm::cpu {

class CpuBackend final : public Backend {
 public:
  // vLLM's CPU default KV-cache cap (VLLM_CPU_KVCACHE_SPACE = 4 GiB) when sized from a fraction.
  static constexpr int64_t kMaxKvCacheBytes = int64_t{4} << 30;

  Device device() const override { return Device::kCPU; }
  Allocator& allocator() override { return cpu_allocator(); }
  MemoryInfo memory_info() const override;
  int64_t kv_cache_budget(const KvBudgetRequest& request) const override;
  DType resolve_dtype(const std::string& requested, DType checkpoint,
                      std::vector<std::string>* notes) const override;
  int num_threads() const override;
  void set_num_threads(int threads) override;
  void synchronize(void*) override {}
};

CpuBackend& cpu_backend();

// The process-wide CPU execution context (no stream; a shared workspace). Ops called from the
// engine thread, the bindings and tests use it; it is not for concurrent use of its workspace.
ExecContext& cpu_context();

}  // namespace fastlm::cpu
