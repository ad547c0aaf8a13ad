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
#include "cpu/batch_invariant.h"
#include "cpu/gemm_cpu.h"
#include "cpu/isa.h"
#include "cpu/simd.h"

#if defined(__x86_64__)
// GCC 12's AVX-512 headers use _mm512_undefined_*() operands that trip this warning.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace fastlm::cpu {

namespace {

int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

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
  return std::clamp(std::atoi(env), -1, kGemvMaxRows);
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
  FASTLM_CHECK_ARG(rows >= -1 && rows <= kGemvMaxRows, "gemv_max_rows must be in [-1, ",
                   kGemvMaxRows, "], got ", rows);
  gemv_rows().store(rows, std::memory_order_relaxed);
}

void linear_f32(const float* x, const float* w, const float* bias, float* y, int64_t m, int64_t n,
                int64_t k) {
  if (m == 0 || n == 0) return;
  if (k == 0) return fill_bias(bias, y, m, n);
  if (linear_fused(x, false, w, false, bias, y, false, LinearAct::kNone, m, n, k)) return;
  gemm_canonical(x, w, false, bias, y, m, n, k);
}

void linear_bf16(const float* x, const uint16_t* w, const float* bias, float* y, int64_t m,
                 int64_t n, int64_t k) {
  if (m == 0 || n == 0) return;
  if (k == 0) return fill_bias(bias, y, m, n);
  if (linear_fused(x, false, w, true, bias, y, false, LinearAct::kNone, m, n, k)) return;
  if (batch_invariant() || m <= gemv_max_rows(true)) {
    return gemm_canonical(x, w, true, bias, y, m, n, k);
  }
  matmul_bf16_widened(x, w, bias, y, m, n, k);
}

bool linear_fused(const void* x, bool x_bf16, const void* w, bool w_bf16, const float* bias,
                  void* y, bool y_bf16, LinearAct act, int64_t m, int64_t n, int64_t k) {
  if (m == 0 || n == 0 || k == 0 || batch_invariant() || m <= gemv_max_rows(w_bf16)) return false;
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
