#pragma once
// Runtime instruction-set selection for the CPU kernels. The build targets x86-64-v3
// (AVX2/FMA/F16C); AVX-512 bodies are compiled per function with target attributes and only
// called when the CPU has them. FASTLM_ISA=<name> (or set_isa) lowers the choice, so tests can
// cover every path on one machine. On non-x86 builds only the portable scalar path exists.
#include <cstdint>
#include <string>

namespace fastlm::cpu {

// Ordered: each level implies the ones below it.
enum class Isa : uint8_t {
  kScalar,      // portable C++ (auto-vectorized at the baseline flags)
  kAvx2,        // AVX2 + FMA + F16C
  kAvx512,      // AVX-512 F/BW/VL
  kAvx512Bf16,  // + AVX512_BF16 (vdpbf16ps)
};

const char* isa_name(Isa isa);
// "scalar", "avx2", "avx512", "avx512bf16"; throws InvalidArgument on anything else.
Isa parse_isa(const std::string& name);

// The best level this CPU supports (ignores overrides).
Isa detected_isa();
// The level kernels dispatch on: detected_isa(), lowered by FASTLM_ISA at first use.
Isa active_isa();
// Selects a level at run time; throws InvalidArgument when the CPU lacks it.
void set_isa(Isa isa);

}  // namespace fastlm::cpu
