#include "cpu/linear_cpu.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <dnnl.hpp>
#include <vector>

#include "core/dtype.h"
#include "core/status.h"
#include "cpu/batch_invariant.h"
#include "cpu/convert_cpu.h"
#include "cpu/gelu_cpu.h"
#include "cpu/gemm_cpu.h"
#include "cpu/isa.h"
#include "cpu/onednn_matmul.h"

namespace fastlm::cpu {

namespace {

int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

// bf16 x bf16 matmuls need AVX512_BF16 (or AVX512_CORE emulation) in oneDNN; this records
// whether the library accepted one, so we ask only once.
std::atomic<int> dnnl_bf16_state{-1};  // -1 unknown, 0 unavailable, 1 available

// x rounded to bf16 in a per-thread scratch (the oneDNN source of bf16 matmuls).
const uint16_t* x_as_bf16(const float* x, int64_t total) {
  thread_local std::vector<uint16_t> xb;
  xb.resize(static_cast<size_t>(total));
  // Through a plain pointer: inside the parallel loop `xb` would name each thread's own copy.
  uint16_t* xp = xb.data();
  constexpr int64_t kChunk = 1 << 14;
  const int64_t chunks = (total + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (total > (1 << 16))
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * kChunk;
    f32_to_bf16_n(x + begin, xp + begin, std::min(total, begin + kChunk) - begin);
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
  float* xrp = xr.data();  // inside the parallel loop `xr` would name each thread's own copy
#pragma omp parallel for schedule(static) if (m * k > (1 << 16))
  for (int64_t i = 0; i < m * k; ++i) xrp[i] = bf16_to_f32(f32_to_bf16(x[i]));
  const int64_t nb = std::min<int64_t>(n, std::max<int64_t>(16, round_up((256 << 10) / k, 16)));
  wf.resize(static_cast<size_t>(nb * k));
  for (int64_t n0 = 0; n0 < n; n0 += nb) {
    const int64_t nc = std::min(nb, n - n0);
    const uint16_t* src = w + n0 * k;
    const int64_t count = nc * k;
    float* dst = wf.data();
#pragma omp parallel for schedule(static) if (count > (1 << 16))
    for (int64_t i = 0; i < count; ++i) dst[i] = bf16_to_f32(src[i]);
    onednn_matmul({m, nc, k, n, false, bias != nullptr}, xr.data(), wf.data(),
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

// x @ w^T as one oneDNN primitive (see linear_fused); false where none applies.
bool fused_onednn(const void* x, bool x_bf16, const void* w, bool w_bf16, const float* bias,
                  void* y, bool y_bf16, LinearAct act, int64_t m, int64_t n, int64_t k);

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
  if (batch_invariant() || m <= gemv_max_rows(w_bf16)) return false;
  return fused_onednn(x, x_bf16, w, w_bf16, bias, y, y_bf16, act, m, n, k);
}

bool linear_fused_per_request(const void* x, bool x_bf16, const void* w, bool w_bf16,
                              const float* bias, void* y, bool y_bf16, LinearAct act, int64_t m,
                              int64_t n, int64_t k) {
  if (m == 0 || n == 0 || k == 0) return false;
  if (w_bf16 && !native_bf16_matmul()) {
    // No bf16 matmul in oneDNN here: the f32 primitive over widened weight slices, with x
    // (rounded to bf16, as bf16 matmuls take it) and y through float32 scratch.
    thread_local std::vector<float> xf_buf, yf_buf;
    const float* xf = static_cast<const float*>(x);
    if (x_bf16) {
      xf_buf.resize(static_cast<size_t>(m * k));
      float* dst = xf_buf.data();
      const uint16_t* src = static_cast<const uint16_t*>(x);
#pragma omp parallel for schedule(static) if (m * k > (1 << 16))
      for (int64_t i = 0; i < m * k; ++i) dst[i] = bf16_to_f32(src[i]);
      xf = dst;
    }
    float* yf = static_cast<float*>(y);
    if (y_bf16) {
      yf_buf.resize(static_cast<size_t>(m * n));
      yf = yf_buf.data();
    }
    matmul_bf16_widened(xf, static_cast<const uint16_t*>(w), bias, yf, m, n, k);
    if (act != LinearAct::kNone) gelu(yf, m * n, act == LinearAct::kGeluTanh);
    if (y_bf16) {
      uint16_t* dst = static_cast<uint16_t*>(y);
      constexpr int64_t kChunk = 1 << 14;
#pragma omp parallel for schedule(static) if (m * n > (1 << 16))
      for (int64_t c = 0; c < m * n; c += kChunk)
        f32_to_bf16_n(yf + c, dst + c, std::min(kChunk, m * n - c));
    }
    return true;
  }
  return fused_onednn(x, x_bf16, w, w_bf16, bias, y, y_bf16, act, m, n, k);
}

namespace {

bool fused_onednn(const void* x, bool x_bf16, const void* w, bool w_bf16, const float* bias,
                  void* y, bool y_bf16, LinearAct act, int64_t m, int64_t n, int64_t k) {
  if (m == 0 || n == 0 || k == 0) return false;
  if (!w_bf16) {
    if (x_bf16 || y_bf16) return false;
    onednn_matmul({m, n, k, n, false, bias != nullptr, false, act}, x, w, bias, y);
    return true;
  }
  // The native primitive is used only on the AVX512-BF16 path, so forcing a lower ISA also
  // exercises the widening fallback that AVX2-only machines take.
  if (!native_bf16_matmul()) return false;
  try {
    const void* src = x_bf16 ? x : x_as_bf16(static_cast<const float*>(x), m * k);
    onednn_matmul({m, n, k, n, true, bias != nullptr, y_bf16, act}, src, w, bias, y);
    dnnl_bf16_state.store(1);
    return true;
  } catch (const dnnl::error&) {
    dnnl_bf16_state.store(0);
    return false;
  }
}

}  // namespace

}  // namespace fastlm::cpu
