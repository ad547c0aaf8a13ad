#include "cpu/linear_cpu.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <dnnl.hpp>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "core/dtype.h"
#include "core/status.h"
#include "cpu/isa.h"
#include "cpu/simd.h"

#if defined(__x86_64__)
// GCC 12's AVX-512 headers use _mm512_undefined_*() operands that trip this warning.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace fastlm::cpu {

namespace {

constexpr int kMaxGemvRows = 8;
// x rows are copied into a zero-padded scratch of this alignment, so vector loops over x never
// need a tail (the weight rows get masked loads or a scalar tail instead).
constexpr int64_t kXPad = 32;

int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

inline float to_f32(float v) { return v; }
inline float to_f32(uint16_t v) { return bf16_to_f32(v); }

// The GEMV kernels: rows [n0, n1) of y[:, n] for MR rows of x. x is the padded scratch
// (ldx elements per row, bf16 bits for the dpbf16 kernel, float otherwise).
using GemvFn = void (*)(const void* x, int64_t ldx, const void* w, int64_t k, int64_t n0,
                        int64_t n1, const float* bias, float* y, int64_t ldy);

// ---- portable ----

template <int MR, typename WT>
void gemv_scalar(const void* xv, int64_t ldx, const void* wv, int64_t k, int64_t n0, int64_t n1,
                 const float* bias, float* y, int64_t ldy) {
  const float* x = static_cast<const float*>(xv);
  const WT* w = static_cast<const WT*>(wv);
  for (int64_t n = n0; n < n1; ++n) {
    const WT* wr = w + n * k;
    float acc[MR] = {};
    for (int64_t i = 0; i < k; ++i) {
      const float wf = to_f32(wr[i]);
      for (int m = 0; m < MR; ++m) acc[m] += wf * x[m * ldx + i];
    }
    for (int m = 0; m < MR; ++m) y[m * ldy + n] = acc[m] + (bias ? bias[n] : 0.0f);
  }
}

#if defined(__x86_64__)

using simd::hsum8;

// ---- AVX2 + FMA (the baseline flags) ----

FASTLM_INLINE __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
FASTLM_INLINE __m256 load8(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// Each kernel walks one weight row at a time, front to back: measured on Zen 4, a single
// sequential stream per thread reads at full speed while interleaving 2-4 rows (to reuse x
// loads) lost up to half the bandwidth. Two accumulator sets per x row (even/odd k steps) keep
// the FMA latency chain off the critical path when M is small.

template <int MR, typename WT>
FASTLM_INLINE void row_avx2(const float* x, int64_t ldx, const WT* w, int64_t k, int64_t n,
                            const float* bias, float* y, int64_t ldy) {
  const WT* wr = w + n * k;
  __m256 acc0[MR], acc1[MR];
  for (int m = 0; m < MR; ++m) acc0[m] = acc1[m] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= k; i += 16) {
    const __m256 w0 = load8(wr + i), w1 = load8(wr + i + 8);
    for (int m = 0; m < MR; ++m) {
      acc0[m] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + m * ldx + i), acc0[m]);
      acc1[m] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + m * ldx + i + 8), acc1[m]);
    }
  }
  for (; i + 8 <= k; i += 8) {
    const __m256 w0 = load8(wr + i);
    for (int m = 0; m < MR; ++m)
      acc0[m] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + m * ldx + i), acc0[m]);
  }
  for (int m = 0; m < MR; ++m) {
    float s = hsum8(_mm256_add_ps(acc0[m], acc1[m]));
    for (int64_t j = i; j < k; ++j) s += to_f32(wr[j]) * x[m * ldx + j];
    y[m * ldy + n] = s + (bias ? bias[n] : 0.0f);
  }
}

template <int MR, typename WT>
void gemv_avx2(const void* xv, int64_t ldx, const void* wv, int64_t k, int64_t n0, int64_t n1,
               const float* bias, float* y, int64_t ldy) {
  const float* x = static_cast<const float*>(xv);
  const WT* w = static_cast<const WT*>(wv);
  for (int64_t n = n0; n < n1; ++n) row_avx2<MR>(x, ldx, w, k, n, bias, y, ldy);
}

// ---- AVX-512 F/BW/VL: float32 weights, or bf16 weights widened by a shift ----

FASTLM_AVX512 FASTLM_INLINE __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
FASTLM_AVX512 FASTLM_INLINE __m512 load16(const uint16_t* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
FASTLM_AVX512 FASTLM_INLINE __m512 load16_tail(const float* p, __mmask16 mask) {
  return _mm512_maskz_loadu_ps(mask, p);
}
FASTLM_AVX512 FASTLM_INLINE __m512 load16_tail(const uint16_t* p, __mmask16 mask) {
  const __m256i h = _mm256_maskz_loadu_epi16(mask, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

template <int MR, typename WT>
FASTLM_AVX512 FASTLM_INLINE void row_avx512(const float* x, int64_t ldx, const WT* w, int64_t k,
                                            int64_t n, const float* bias, float* y, int64_t ldy) {
  const WT* wr = w + n * k;
  __m512 acc0[MR], acc1[MR];
  for (int m = 0; m < MR; ++m) acc0[m] = acc1[m] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= k; i += 32) {
    const __m512 w0 = load16(wr + i), w1 = load16(wr + i + 16);
    for (int m = 0; m < MR; ++m) {
      acc0[m] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + m * ldx + i), acc0[m]);
      acc1[m] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + m * ldx + i + 16), acc1[m]);
    }
  }
  for (; i < k; i += 16) {  // masked weight loads never touch memory past the row; x is padded
    const int64_t left = k - i;
    const __mmask16 mask =
        left >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << left) - 1u);
    const __m512 w0 = load16_tail(wr + i, mask);
    for (int m = 0; m < MR; ++m)
      acc0[m] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + m * ldx + i), acc0[m]);
  }
  for (int m = 0; m < MR; ++m)
    y[m * ldy + n] =
        _mm512_reduce_add_ps(_mm512_add_ps(acc0[m], acc1[m])) + (bias ? bias[n] : 0.0f);
}

template <int MR, typename WT>
FASTLM_AVX512 void gemv_avx512(const void* xv, int64_t ldx, const void* wv, int64_t k, int64_t n0,
                               int64_t n1, const float* bias, float* y, int64_t ldy) {
  const float* x = static_cast<const float*>(xv);
  const WT* w = static_cast<const WT*>(wv);
  for (int64_t n = n0; n < n1; ++n) row_avx512<MR>(x, ldx, w, k, n, bias, y, ldy);
}

// ---- AVX512-BF16: vdpbf16ps on bf16 weights and x rounded to bf16 once ----

template <int MR>
FASTLM_AVX512BF16 FASTLM_INLINE void row_bf16dp(const uint16_t* x, int64_t ldx, const uint16_t* w,
                                                int64_t k, int64_t n, const float* bias, float* y,
                                                int64_t ldy) {
  const uint16_t* wr = w + n * k;
  __m512 acc0[MR], acc1[MR];
  for (int m = 0; m < MR; ++m) acc0[m] = acc1[m] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 64 <= k; i += 64) {
    const __m512bh w0 = (__m512bh)_mm512_loadu_si512(wr + i);
    const __m512bh w1 = (__m512bh)_mm512_loadu_si512(wr + i + 32);
    for (int m = 0; m < MR; ++m) {
      acc0[m] = _mm512_dpbf16_ps(acc0[m], w0, (__m512bh)_mm512_loadu_si512(x + m * ldx + i));
      acc1[m] = _mm512_dpbf16_ps(acc1[m], w1, (__m512bh)_mm512_loadu_si512(x + m * ldx + i + 32));
    }
  }
  for (; i < k; i += 32) {  // masked weight loads never touch memory past the row; x is padded
    const int64_t left = k - i;
    const __mmask32 mask = left >= 32 ? static_cast<__mmask32>(0xffffffffu)
                                      : static_cast<__mmask32>((1u << left) - 1u);
    const __m512bh w0 = (__m512bh)_mm512_maskz_loadu_epi16(mask, wr + i);
    for (int m = 0; m < MR; ++m)
      acc0[m] = _mm512_dpbf16_ps(acc0[m], w0, (__m512bh)_mm512_loadu_si512(x + m * ldx + i));
  }
  for (int m = 0; m < MR; ++m)
    y[m * ldy + n] =
        _mm512_reduce_add_ps(_mm512_add_ps(acc0[m], acc1[m])) + (bias ? bias[n] : 0.0f);
}

template <int MR>
FASTLM_AVX512BF16 void gemv_bf16dp(const void* xv, int64_t ldx, const void* wv, int64_t k,
                                   int64_t n0, int64_t n1, const float* bias, float* y,
                                   int64_t ldy) {
  const uint16_t* x = static_cast<const uint16_t*>(xv);
  const uint16_t* w = static_cast<const uint16_t*>(wv);
  for (int64_t n = n0; n < n1; ++n) row_bf16dp<MR>(x, ldx, w, k, n, bias, y, ldy);
}

#endif  // __x86_64__

#define FASTLM_GEMV_TABLE(...)                                                           \
  {                                                                                      \
    &__VA_ARGS__<1>, &__VA_ARGS__<2>, &__VA_ARGS__<3>, &__VA_ARGS__<4>, &__VA_ARGS__<5>, \
        &__VA_ARGS__<6>, &__VA_ARGS__<7>, &__VA_ARGS__<8>                                \
  }

// Binds the weight type, so each kernel family is a template over MR alone.
#define FASTLM_GEMV_BIND(name, kernel, wt)                                                \
  template <int MR>                                                                       \
  void name(const void* x, int64_t ldx, const void* w, int64_t k, int64_t n0, int64_t n1, \
            const float* bias, float* y, int64_t ldy) {                                   \
    kernel<MR, wt>(x, ldx, w, k, n0, n1, bias, y, ldy);                                   \
  }
FASTLM_GEMV_BIND(gemv_scalar_f32, gemv_scalar, float)
FASTLM_GEMV_BIND(gemv_scalar_bf16, gemv_scalar, uint16_t)
#if defined(__x86_64__)
FASTLM_GEMV_BIND(gemv_avx2_f32, gemv_avx2, float)
FASTLM_GEMV_BIND(gemv_avx2_bf16, gemv_avx2, uint16_t)
FASTLM_GEMV_BIND(gemv_avx512_f32, gemv_avx512, float)
FASTLM_GEMV_BIND(gemv_avx512_bf16, gemv_avx512, uint16_t)
#endif
#undef FASTLM_GEMV_BIND

struct GemvKernel {
  GemvFn fn;
  bool x_bf16;  // x scratch holds bf16 bits instead of floats
};

GemvKernel pick_gemv(bool w_bf16, int m) {
  static constexpr GemvFn kScalarF32[] = FASTLM_GEMV_TABLE(gemv_scalar_f32);
  static constexpr GemvFn kScalarBf16[] = FASTLM_GEMV_TABLE(gemv_scalar_bf16);
#if defined(__x86_64__)
  static constexpr GemvFn kAvx2F32[] = FASTLM_GEMV_TABLE(gemv_avx2_f32);
  static constexpr GemvFn kAvx2Bf16[] = FASTLM_GEMV_TABLE(gemv_avx2_bf16);
  static constexpr GemvFn kAvx512F32[] = FASTLM_GEMV_TABLE(gemv_avx512_f32);
  static constexpr GemvFn kAvx512Bf16[] = FASTLM_GEMV_TABLE(gemv_avx512_bf16);
  static constexpr GemvFn kBf16Dp[] = FASTLM_GEMV_TABLE(gemv_bf16dp);
#endif
  const int i = m - 1;
  switch (active_isa()) {
    case Isa::kAvx512Bf16:
#if defined(__x86_64__)
      return w_bf16 ? GemvKernel{kBf16Dp[i], true} : GemvKernel{kAvx512F32[i], false};
#endif
    case Isa::kAvx512:
#if defined(__x86_64__)
      return {w_bf16 ? kAvx512Bf16[i] : kAvx512F32[i], false};
#endif
    case Isa::kAvx2:
#if defined(__x86_64__)
      return {w_bf16 ? kAvx2Bf16[i] : kAvx2F32[i], false};
#endif
    case Isa::kScalar:
      return {w_bf16 ? kScalarBf16[i] : kScalarF32[i], false};
  }
  return {w_bf16 ? kScalarBf16[i] : kScalarF32[i], false};
}

// Runs fn(n0, n1) over [0, n) split across the OpenMP threads in row ranges that are multiples
// of 16 (whole register blocks); small problems stay on the calling thread.
template <typename Fn>
void parallel_rows(int64_t n, int64_t bytes_per_row, Fn&& fn) {
  const int threads = omp_get_max_threads();
  if (threads <= 1 || n * bytes_per_row < (64 << 10)) {
    fn(int64_t{0}, n);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    const int nt = omp_get_num_threads();
    const int64_t chunk = round_up((n + nt - 1) / nt, 16);
    const int64_t begin = std::min<int64_t>(n, t * chunk);
    const int64_t end = std::min<int64_t>(n, begin + chunk);
    if (begin < end) fn(begin, end);
  }
}

void run_gemv(const float* x, const void* w, bool w_bf16, const float* bias, float* y, int64_t m,
              int64_t n, int64_t k) {
  const int64_t ldx = round_up(k, kXPad);
  thread_local std::vector<float> xf;
  thread_local std::vector<uint16_t> xb;
  // Rows of x beyond the 8 a kernel takes run as further passes over the weights.
  for (int64_t m0 = 0; m0 < m; m0 += kMaxGemvRows) {
    const int mr = static_cast<int>(std::min<int64_t>(kMaxGemvRows, m - m0));
    const GemvKernel kernel = pick_gemv(w_bf16, mr);
    const void* xq;
    if (kernel.x_bf16) {
      xb.assign(static_cast<size_t>(mr * ldx), 0);
      for (int r = 0; r < mr; ++r)
        for (int64_t i = 0; i < k; ++i) xb[r * ldx + i] = f32_to_bf16(x[(m0 + r) * k + i]);
      xq = xb.data();
    } else {
      xf.assign(static_cast<size_t>(mr * ldx), 0.0f);
      for (int r = 0; r < mr; ++r)
        for (int64_t i = 0; i < k; ++i) {
          const float v = x[(m0 + r) * k + i];
          xf[r * ldx + i] = w_bf16 ? bf16_to_f32(f32_to_bf16(v)) : v;
        }
      xq = xf.data();
    }
    float* yr = y + m0 * n;
    parallel_rows(n, k * (w_bf16 ? 2 : 4),
                  [&](int64_t n0, int64_t n1) { kernel.fn(xq, ldx, w, k, n0, n1, bias, yr, n); });
  }
}

// ---- oneDNN matmul for larger M ----

dnnl::engine& dnnl_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// Primitive creation costs far more than a small matmul, so primitives are cached per shape.
// ldy lets a primitive write a column slice of a wider y (the chunked bf16 fallback).
struct MatmulKey {
  int64_t m, n, k, ldy;
  bool bf16, bias;
  bool y_bf16 = false;               // dst rounded to bf16 (after the activation)
  LinearAct act = LinearAct::kNone;  // fused as an eltwise post-op
  auto operator<=>(const MatmulKey&) const = default;
};

const dnnl::matmul& cached_matmul(const MatmulKey& key) {
  static std::mutex mu;
  static std::map<MatmulKey, dnnl::matmul> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  if (cache.size() >= 4096) cache.clear();  // bounds memory if M keeps changing
  using dt = dnnl::memory::data_type;
  using tag = dnnl::memory::format_tag;
  const dt in_dt = key.bf16 ? dt::bf16 : dt::f32;
  const dnnl::memory::desc src({key.m, key.k}, in_dt, tag::ab);
  // w is [N,K] row-major, i.e. the KxN weights matrix in "ba" order: used in place.
  const dnnl::memory::desc wei({key.k, key.n}, in_dt, tag::ba);
  const dnnl::memory::desc dst({key.m, key.n}, key.y_bf16 ? dt::bf16 : dt::f32,
                               dnnl::memory::dims{key.ldy, 1});
  dnnl::primitive_attr attr;
  switch (key.act) {
    case LinearAct::kNone:
      break;
    case LinearAct::kGeluErf:
    case LinearAct::kGeluTanh: {
      dnnl::post_ops po;
      po.append_eltwise(key.act == LinearAct::kGeluErf ? dnnl::algorithm::eltwise_gelu_erf
                                                       : dnnl::algorithm::eltwise_gelu_tanh,
                        0.0f, 0.0f);
      attr.set_post_ops(po);
      break;
    }
  }
  const dnnl::matmul::primitive_desc pd =
      key.bias ? dnnl::matmul::primitive_desc(dnnl_engine(), src, wei,
                                              dnnl::memory::desc({1, key.n}, dt::f32, tag::ab),
                                              dst, attr)
               : dnnl::matmul::primitive_desc(dnnl_engine(), src, wei, dst, attr);
  return cache.emplace(key, dnnl::matmul(pd)).first->second;
}

void run_matmul(const MatmulKey& key, const void* x, const void* w, const float* bias, void* y) {
  const dnnl::matmul& prim = cached_matmul(key);
  using dt = dnnl::memory::data_type;
  using tag = dnnl::memory::format_tag;
  const dt in_dt = key.bf16 ? dt::bf16 : dt::f32;
  dnnl::engine& eng = dnnl_engine();
  dnnl::memory src({{key.m, key.k}, in_dt, tag::ab}, eng, const_cast<void*>(x));
  dnnl::memory wei({{key.k, key.n}, in_dt, tag::ba}, eng, const_cast<void*>(w));
  dnnl::memory dst(
      {{key.m, key.n}, key.y_bf16 ? dt::bf16 : dt::f32, dnnl::memory::dims{key.ldy, 1}}, eng, y);
  std::unordered_map<int, dnnl::memory> args{
      {DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst}};
  if (key.bias) {
    args.emplace(DNNL_ARG_BIAS,
                 dnnl::memory({{1, key.n}, dt::f32, tag::ab}, eng, const_cast<float*>(bias)));
  }
  thread_local dnnl::stream stream(eng);
  prim.execute(stream, args);
  stream.wait();
}

// bf16 x bf16 matmuls need AVX512_BF16 (or AVX512_CORE emulation) in oneDNN; this records
// whether the library accepted one, so we ask only once.
std::atomic<int> dnnl_bf16_state{-1};  // -1 unknown, 0 unavailable, 1 available

// float32 -> bfloat16 bits over n values, rounding exactly as f32_to_bf16 (nearest even, NaN
// kept quiet).
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

// x rounded to bf16 in a per-thread scratch (the oneDNN source of bf16 matmuls).
const uint16_t* x_as_bf16(const float* x, int64_t total) {
  thread_local std::vector<uint16_t> xb;
  xb.resize(static_cast<size_t>(total));
  // Through a plain pointer: inside the parallel loop `xb` would name each thread's own copy.
  uint16_t* xp = xb.data();
  const ToBf16Fn convert = pick_to_bf16();
  constexpr int64_t kChunk = 1 << 14;
  const int64_t chunks = (total + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (total > (1 << 16))
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * kChunk;
    convert(x + begin, xp + begin, std::min(total, begin + kChunk) - begin);
  }
  return xp;
}

bool native_bf16_matmul() {
  return active_isa() == Isa::kAvx512Bf16 && dnnl_bf16_state.load() != 0;
}

// Without native bf16 matmul: widen slices of the weights to f32 (sized to stay in L2) and run
// the f32 primitive on each slice. The widening pass costs N*K once per call, amortized over M.
void matmul_bf16_widened(const float* x, const uint16_t* w, const float* bias, float* y, int64_t m,
                         int64_t n, int64_t k) {
  thread_local std::vector<float> xr;
  thread_local std::vector<float> wf;
  xr.resize(static_cast<size_t>(m * k));
  for (int64_t i = 0; i < m * k; ++i) xr[i] = bf16_to_f32(f32_to_bf16(x[i]));
  const int64_t nb = std::min<int64_t>(n, std::max<int64_t>(16, round_up((256 << 10) / k, 16)));
  wf.resize(static_cast<size_t>(nb * k));
  for (int64_t n0 = 0; n0 < n; n0 += nb) {
    const int64_t nc = std::min(nb, n - n0);
    const uint16_t* src = w + n0 * k;
    const int64_t count = nc * k;
    float* dst = wf.data();
#pragma omp parallel for schedule(static) if (count > (1 << 16))
    for (int64_t i = 0; i < count; ++i) dst[i] = bf16_to_f32(src[i]);
    run_matmul({m, nc, k, n, false, bias != nullptr}, xr.data(), wf.data(),
               bias ? bias + n0 : nullptr, y + n0);
  }
}

// Crossover with oneDNN measured on Zen 4 (2 cores, SmolLM2 shapes): the bf16 GEMV wins up to
// M = 8, the f32 one up to M = 4. -1 = those defaults; FASTLM_GEMV_MAX_ROWS overrides both.
int initial_gemv_rows() {
  const char* env = std::getenv("FASTLM_GEMV_MAX_ROWS");
  if (env == nullptr || *env == '\0') return -1;
  return std::clamp(std::atoi(env), -1, kMaxGemvRows);
}

std::atomic<int>& gemv_rows() {
  static std::atomic<int> rows{initial_gemv_rows()};
  return rows;
}

void fill_bias(const float* bias, float* y, int64_t m, int64_t n) {
  for (int64_t r = 0; r < m; ++r)
    for (int64_t j = 0; j < n; ++j) y[r * n + j] = bias ? bias[j] : 0.0f;
}

}  // namespace

int gemv_max_rows(bool bf16_weights) {
  const int rows = gemv_rows().load(std::memory_order_relaxed);
  if (rows >= 0) return rows;
  return bf16_weights ? 8 : 4;
}

void set_gemv_max_rows(int rows) {
  FASTLM_CHECK_ARG(rows >= -1 && rows <= kMaxGemvRows, "gemv_max_rows must be in [-1, ",
                   kMaxGemvRows, "], got ", rows);
  gemv_rows().store(rows, std::memory_order_relaxed);
}

void linear_f32(const float* x, const float* w, const float* bias, float* y, int64_t m, int64_t n,
                int64_t k) {
  if (m == 0 || n == 0) return;
  if (k == 0) return fill_bias(bias, y, m, n);
  if (linear_fused(x, false, w, false, bias, y, false, LinearAct::kNone, m, n, k)) return;
  run_gemv(x, w, false, bias, y, m, n, k);
}

void linear_bf16(const float* x, const uint16_t* w, const float* bias, float* y, int64_t m,
                 int64_t n, int64_t k) {
  if (m == 0 || n == 0) return;
  if (k == 0) return fill_bias(bias, y, m, n);
  if (linear_fused(x, false, w, true, bias, y, false, LinearAct::kNone, m, n, k)) return;
  if (m <= gemv_max_rows(true)) return run_gemv(x, w, true, bias, y, m, n, k);
  matmul_bf16_widened(x, w, bias, y, m, n, k);
}

bool linear_fused(const void* x, bool x_bf16, const void* w, bool w_bf16, const float* bias,
                  void* y, bool y_bf16, LinearAct act, int64_t m, int64_t n, int64_t k) {
  if (m == 0 || n == 0 || k == 0 || m <= gemv_max_rows(w_bf16)) return false;
  if (!w_bf16) {
    if (x_bf16 || y_bf16) return false;
    run_matmul({m, n, k, n, false, bias != nullptr, false, act}, x, w, bias, y);
    return true;
  }
  // The native primitive is used only on the AVX512-BF16 path, so forcing a lower ISA also
  // exercises the widening fallback that AVX2-only machines take.
  if (!native_bf16_matmul()) return false;
  try {
    const void* src = x_bf16 ? x : x_as_bf16(static_cast<const float*>(x), m * k);
    run_matmul({m, n, k, n, true, bias != nullptr, y_bf16, act}, src, w, bias, y);
    dnnl_bf16_state.store(1);
    return true;
  } catch (const dnnl::error&) {
    dnnl_bf16_state.store(0);
    return false;
  }
}

}  // namespace fastlm::cpu
