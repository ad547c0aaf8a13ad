#include "cpu/isa.h"

#include <atomic>
#include <cstdlib>

#include "core/status.h"

#if defined(__x86_64__)
#include <cpuid.h>
#endif

namespace fastlm::cpu {

namespace {

Isa detect() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return Isa::kScalar;
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
      !__builtin_cpu_supports("avx512vl")) {
    return Isa::kAvx2;
  }
  // AVX512_BF16 is CPUID leaf 7, subleaf 1, EAX bit 5 (older compilers lack the builtin name).
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) && (eax & (1u << 5)) != 0) {
    return Isa::kAvx512Bf16;
  }
  return Isa::kAvx512;
#else
  return Isa::kScalar;
#endif
}

Isa initial() {
  const Isa best = detected_isa();
  const char* env = std::getenv("FASTLM_ISA");
  if (env == nullptr || *env == '\0') return best;
  const Isa wanted = parse_isa(env);
  // An override asks for at most this level; never select something the CPU cannot run.
  return wanted < best ? wanted : best;
}

std::atomic<Isa>& active() {
  static std::atomic<Isa> isa{initial()};
  return isa;
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kScalar:
      return "scalar";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx512Bf16:
      return "avx512bf16";
  }
  return "?";
}

Isa parse_isa(const std::string& name) {
  if (name == "scalar") return Isa::kScalar;
  if (name == "avx2") return Isa::kAvx2;
  if (name == "avx512") return Isa::kAvx512;
  if (name == "avx512bf16") return Isa::kAvx512Bf16;
  throw InvalidArgument("unknown ISA '" + name + "' (expected scalar, avx2, avx512, avx512bf16)");
}

Isa detected_isa() {
  static const Isa isa = detect();
  return isa;
}

Isa active_isa() { return active().load(std::memory_order_relaxed); }

void set_isa(Isa isa) {
  FASTLM_CHECK_ARG(isa <= detected_isa(), "ISA ", isa_name(isa), " is not supported by this CPU (",
                   isa_name(detected_isa()), " is the best available)");
  active().store(isa, std::memory_order_relaxed);
}

}  // namespace fastlm::cpu
