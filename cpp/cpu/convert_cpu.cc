#include "cpu/convert_cpu.h"

#include "core/dtype.h"
#include "cpu/isa.h"
#include "cpu/simd.h"

#if defined(__x86_64__)
// GCC 12's AVX-512 headers use _mm512_undefined_*() operands that trip this warning.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace fastlm::cpu {

namespace {

using ToBf16Fn = void (*)(const float* x, uint16_t* y, int64_t n);

void to_bf16_scalar(const float* x, uint16_t* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = f32_to_bf16(x[i]);
}

#if defined(__x86_64__)
FASTLM_AVX512 void to_bf16_avx512(const float* x, uint16_t* y, int64_t n) {
  const __m512i one = _mm512_set1_epi32(1);
  const __m512i round = _mm512_set1_epi32(0x7fff);
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
  const __m512i inf = _mm512_set1_epi32(0x7f800000);
  const __m512i quiet = _mm512_set1_epi32(0x400000);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512i b = _mm512_loadu_si512(x + i);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(b, abs_mask), inf);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), one);
    __m512i r = _mm512_add_epi32(b, _mm512_add_epi32(round, lsb));
    r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(b, quiet));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i),
                        _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16)));
  }
  to_bf16_scalar(x + i, y + i, n - i);
}
#endif

ToBf16Fn pick_to_bf16() {
  switch (active_isa()) {
    case Isa::kAvx512Bf16:
    case Isa::kAvx512:
#if defined(__x86_64__)
      return to_bf16_avx512;
#endif
      [[fallthrough]];
    case Isa::kAvx2:
    case Isa::kScalar:
      return to_bf16_scalar;
  }
  return to_bf16_scalar;
}

}  // namespace

void f32_to_bf16_n(const float* x, uint16_t* y, int64_t n) {
  pick_to_bf16()(x, y, n);  // per call: tests switch the ISA at run time
}

}  // namespace fastlm::cpu
