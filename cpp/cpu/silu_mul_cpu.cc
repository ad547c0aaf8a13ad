#include "cpu/silu_mul_cpu.h"

#include <cmath>

#include "cpu/cpu_common.h"
#include "cpu/isa.h"
#include "cpu/simd.h"

#if defined(__x86_64__)
// GCC 12's AVX-512 headers use _mm512_undefined_*() operands that trip this warning.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace fastlm::cpu {

namespace {

// One row: o[j] = g[j] / (1 + exp(-g[j])) * u[j] for j < n.
using RowFn = void (*)(const float* g, const float* u, float* o, int64_t n);

void silu_mul_row_scalar(const float* g, const float* u, float* o, int64_t n) {
  for (int64_t j = 0; j < n; ++j) o[j] = g[j] / (1.0f + fast_exp(-g[j])) * u[j];
}

#if defined(__x86_64__)

void silu_mul_row_avx2(const float* g, const float* u, float* o, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.0f);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 x = _mm256_loadu_ps(g + j);
    const __m256 e = simd::exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
    const __m256 s = _mm256_div_ps(x, _mm256_add_ps(one, e));
    _mm256_storeu_ps(o + j, _mm256_mul_ps(s, _mm256_loadu_ps(u + j)));
  }
  silu_mul_row_scalar(g + j, u + j, o + j, n - j);
}

FASTLM_AVX512 void silu_mul_row_avx512(const float* g, const float* u, float* o, int64_t n) {
  const __m512 one = _mm512_set1_ps(1.0f);
  int64_t j = 0;
  for (; j < n; j += 16) {
    // The tail runs masked: masked-off lanes read nothing and are not stored.
    const __mmask16 k = n - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - j)) - 1);
    const __m512 x = _mm512_maskz_loadu_ps(k, g + j);
    const __m512 e = simd::exp16(_mm512_sub_ps(_mm512_setzero_ps(), x));
    const __m512 s = _mm512_div_ps(x, _mm512_add_ps(one, e));
    _mm512_mask_storeu_ps(o + j, k, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(k, u + j)));
  }
}

#endif  // __x86_64__

RowFn pick_row_fn() {
  switch (active_isa()) {
    case Isa::kAvx512Bf16:
    case Isa::kAvx512:
#if defined(__x86_64__)
      return silu_mul_row_avx512;
#endif
      [[fallthrough]];
    case Isa::kAvx2:
#if defined(__x86_64__)
      return silu_mul_row_avx2;
#endif
      [[fallthrough]];
    case Isa::kScalar:
      return silu_mul_row_scalar;
  }
  return silu_mul_row_scalar;
}

}  // namespace

void silu_mul(const float* gate_up, float* out, int64_t m, int64_t i) {
  const RowFn row = pick_row_fn();
  parallel_for(m, m * i >= kParallelMinElems, [&](int64_t r) {
    row(gate_up + r * 2 * i, gate_up + r * 2 * i + i, out + r * i, i);
  });
}

}  // namespace fastlm::cpu
