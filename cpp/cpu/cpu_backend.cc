#include "cpu/cpu_backend.h"

#include <omp.h>

#include <algorithm>
#include <fstream>
#include <string>

#include "core/status.h"
#include "cpu/isa.h"

namespace fastlm::cpu {
namespace {

// A /proc/meminfo field in bytes (0 when unknown).
int64_t meminfo_bytes(const std::string& field) {
  std::ifstream f("/proc/meminfo");
  std::string key, unit;
  int64_t value = 0;
  while (f >> key >> value >> unit) {
    if (key == field) return value * 1024;
  }
  return 0;
}

}  // namespace

MemoryInfo CpuBackend::memory_info() const {
  MemoryInfo info;
  info.total_bytes = meminfo_bytes("MemTotal:");
  info.available_bytes = meminfo_bytes("MemAvailable:");
  return info;
}

int64_t CpuBackend::kv_cache_budget(const KvBudgetRequest& request) const {
  if (request.explicit_bytes > 0) return request.explicit_bytes;
  FASTLM_CHECK_ARG(request.fraction > 0.0 && request.fraction <= 1.0,
                   "kv_cache_fraction must be in (0, 1], got ", request.fraction);
  const int64_t avail = memory_info().available_bytes;
  const auto budget = static_cast<int64_t>(request.fraction * static_cast<double>(avail));
  return std::min(budget, kMaxKvCacheBytes);
}

// "auto" follows the checkpoint (GGUF: float32 when every tensor is, else bfloat16), except
// that, like vLLM's _resolve_auto_dtype, a float32 checkpoint is downcast to a half type. The
// only CPU half type is bfloat16, and it only pays off with native bf16 dot products
// (AVX512_BF16, honouring FASTLM_ISA / set_isa), so below that level float32 stays float32.
DType CpuBackend::resolve_dtype(const std::string& requested, DType checkpoint,
                                std::vector<std::string>* notes) const {
  DType dtype;
  if (requested == "auto") {
    dtype = checkpoint;
    if (dtype == DType::kF32 && active_isa() >= Isa::kAvx512Bf16) {
      dtype = DType::kBF16;
      notes->push_back(
          "float32 checkpoint computed in bfloat16 (dtype=auto downcasts float32 like vLLM; "
          "--dtype float32 keeps float32)");
    }
  } else {
    try {
      dtype = parse_dtype(requested);
    } catch (const Error& e) {
      throw InvalidArgument(e.what());
    }
  }
  if (dtype == DType::kF16) {
    // float16 -> float32 is exact; CPU kernels have no float16 compute path.
    notes->push_back("float16 weights are computed in float32 (no CPU float16 compute)");
    dtype = DType::kF32;
  }
  return dtype;
}

int CpuBackend::num_threads() const { return omp_get_max_threads(); }

void CpuBackend::set_num_threads(int threads) {
  FASTLM_CHECK_ARG(threads > 0, "num_threads must be positive, got ", threads);
  omp_set_num_threads(threads);
}

CpuBackend& cpu_backend() {
  static CpuBackend backend;
  return backend;
}

ExecContext& cpu_context() {
  static Workspace workspace(Device::kCPU);
  static ExecContext ctx{Device::kCPU, nullptr, &workspace, &cpu_backend()};
  return ctx;
}

}  // namespace fastlm::cpu
