#include "cpu/gemm_cpu.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/dtype.h"
#include "cpu/isa.h"
#include "cpu/simd.h"

#if defined(__x86_64__)
// GCC 12's AVX-512 headers use _mm512_undefined_*() operands that trip this warning.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace fastlm::cpu {

namespace {

// x rows are copied into a zero-padded scratch of this many elements per row, so vector steps
// over x never need a tail (weight rows get masked loads or a scalar tail instead).
constexpr int64_t kXPad = 32;
// Largest tile shape any path uses (rows of x x weight rows).
constexpr int kMaxNR = 3;
// Weight rows per cache block of the tiled path (sized to stay in L2 while every tile of x
// rows passes over them).
constexpr int64_t kBlockBytes = 128 << 10;

int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

inline float to_f32(float v) { return v; }
inline float to_f32(uint16_t v) { return bf16_to_f32(v); }

// A tile: y[r * ldy + c] for r < MR rows of x and c < cols weight rows (cols a multiple of NR).
using TileFn = void (*)(const void* x, int64_t ldx, const void* w, int64_t k, const float* bias,
                        float* y, int64_t ldy, int64_t cols);

// ---- portable: one sequential fma chain per element ----

template <int MR, int NR, typename WT>
void tile_scalar(const void* xv, int64_t ldx, const void* wv, int64_t k, const float* bias,
                 float* y, int64_t ldy, int64_t cols) {
  const float* x = static_cast<const float*>(xv);
  for (int64_t c = 0; c < cols; ++c) {
    const WT* w = static_cast<const WT*>(wv) + c * k;
    for (int r = 0; r < MR; ++r) {
      float s = 0.0f;
      for (int64_t i = 0; i < k; ++i) s = std::fma(to_f32(w[i]), x[r * ldx + i], s);
      y[r * ldy + c] = s + (bias ? bias[c] : 0.0f);
    }
  }
}

#if defined(__x86_64__)

// ---- AVX2 + FMA (the baseline flags) ----
namespace avx2 {
struct Vec {
  using V = __m256;
  using Op = V;
  using X = float;
  static constexpr int64_t kStep = 8;
  static constexpr bool kMaskedTail = false;
  static FASTLM_INLINE V zero() { return _mm256_setzero_ps(); }
  static FASTLM_INLINE V load_x(const float* p) { return _mm256_loadu_ps(p); }
  static FASTLM_INLINE V load_w(const float* p) { return _mm256_loadu_ps(p); }
  static FASTLM_INLINE V load_w(const uint16_t* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  template <typename WT>
  static FASTLM_INLINE V load_w_tail(const WT* p, int64_t) {
    return load_w(p);  // never called: scalar tail
  }
  static FASTLM_INLINE V fma(V acc, V w, V x) { return _mm256_fmadd_ps(w, x, acc); }
  static FASTLM_INLINE float reduce(V a, V b) { return simd::hsum8(_mm256_add_ps(a, b)); }
};
#define FASTLM_TILE_TARGET
#include "cpu/gemm_tile.h"
#undef FASTLM_TILE_TARGET
}  // namespace avx2

// ---- AVX-512 F/BW/VL: float32 weights, or bf16 weights widened by a shift ----
namespace avx512 {
struct Vec {
  using V = __m512;
  using Op = V;
  using X = float;
  static constexpr int64_t kStep = 16;
  static constexpr bool kMaskedTail = true;
  static FASTLM_AVX512 FASTLM_INLINE V zero() { return _mm512_setzero_ps(); }
  static FASTLM_AVX512 FASTLM_INLINE V load_x(const float* p) { return _mm512_loadu_ps(p); }
  static FASTLM_AVX512 FASTLM_INLINE V load_w(const float* p) { return _mm512_loadu_ps(p); }
  static FASTLM_AVX512 FASTLM_INLINE V load_w(const uint16_t* p) { return simd::load16(p); }
  static FASTLM_AVX512 FASTLM_INLINE __mmask16 mask(int64_t left) {
    return left >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << left) - 1u);
  }
  static FASTLM_AVX512 FASTLM_INLINE V load_w_tail(const float* p, int64_t left) {
    return _mm512_maskz_loadu_ps(mask(left), p);
  }
  static FASTLM_AVX512 FASTLM_INLINE V load_w_tail(const uint16_t* p, int64_t left) {
    const __m256i h = _mm256_maskz_loadu_epi16(mask(left), p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  static FASTLM_AVX512 FASTLM_INLINE V fma(V acc, V w, V x) { return _mm512_fmadd_ps(w, x, acc); }
  static FASTLM_AVX512 FASTLM_INLINE float reduce(V a, V b) {
    return _mm512_reduce_add_ps(_mm512_add_ps(a, b));
  }
};
#define FASTLM_TILE_TARGET FASTLM_AVX512
#include "cpu/gemm_tile.h"
#undef FASTLM_TILE_TARGET
}  // namespace avx512

// ---- AVX512-BF16: vdpbf16ps on bf16 weights and x rounded to bf16 bits ----
namespace avx512bf16 {
// zero, reduce and the accumulator type as AVX-512; operands are 32 bf16 values (16 pairs).
struct Vec : avx512::Vec {
  using Op = __m512i;
  using X = uint16_t;
  static constexpr int64_t kStep = 32;
  static FASTLM_AVX512BF16 FASTLM_INLINE Op load_x(const uint16_t* p) {
    return _mm512_loadu_si512(p);
  }
  static FASTLM_AVX512BF16 FASTLM_INLINE Op load_w(const uint16_t* p) {
    return _mm512_loadu_si512(p);
  }
  static FASTLM_AVX512BF16 FASTLM_INLINE Op load_w_tail(const uint16_t* p, int64_t left) {
    const __mmask32 mask = left >= 32 ? static_cast<__mmask32>(0xffffffffu)
                                      : static_cast<__mmask32>((1u << left) - 1u);
    return _mm512_maskz_loadu_epi16(mask, p);
  }
  static FASTLM_AVX512BF16 FASTLM_INLINE V fma(V acc, Op w, Op x) {
    return _mm512_dpbf16_ps(acc, (__m512bh)w, (__m512bh)x);
  }
};
#define FASTLM_TILE_TARGET FASTLM_AVX512BF16
#include "cpu/gemm_tile.h"
#undef FASTLM_TILE_TARGET
}  // namespace avx512bf16

#endif  // __x86_64__

// Tables indexed [MR - 1][NR - 1]: every NR up to kMaxNR for the tiled shapes (MR <= 4), NR = 1
// for the streaming rows above.
#define FASTLM_TILE_ROW3(fn, mr, wt) {&fn<mr, 1, wt>, &fn<mr, 2, wt>, &fn<mr, 3, wt>}
#define FASTLM_TILE_ROW1(fn, mr, wt) {&fn<mr, 1, wt>, nullptr, nullptr}
#define FASTLM_TILE_TABLE(fn, wt)                                                         \
  {FASTLM_TILE_ROW3(fn, 1, wt), FASTLM_TILE_ROW3(fn, 2, wt), FASTLM_TILE_ROW3(fn, 3, wt), \
   FASTLM_TILE_ROW3(fn, 4, wt), FASTLM_TILE_ROW1(fn, 5, wt), FASTLM_TILE_ROW1(fn, 6, wt), \
   FASTLM_TILE_ROW1(fn, 7, wt), FASTLM_TILE_ROW1(fn, 8, wt)}
using TileTable = TileFn[kGemvMaxRows][kMaxNR];

// One ISA path for one weight dtype: its tiles, the tile shape of the tiled path, and the
// element x is staged as.
struct Path {
  const TileTable* tiles;
  int mr, nr;
  bool x_bf16;
};

Path pick_path(bool w_bf16) {
  static constexpr TileTable kScalarF32 = FASTLM_TILE_TABLE(tile_scalar, float);
  static constexpr TileTable kScalarBf16 = FASTLM_TILE_TABLE(tile_scalar, uint16_t);
#if defined(__x86_64__)
  static constexpr TileTable kAvx2F32 = FASTLM_TILE_TABLE(avx2::gemm_tile, float);
  static constexpr TileTable kAvx2Bf16 = FASTLM_TILE_TABLE(avx2::gemm_tile, uint16_t);
  static constexpr TileTable kAvx512F32 = FASTLM_TILE_TABLE(avx512::gemm_tile, float);
  static constexpr TileTable kAvx512Bf16 = FASTLM_TILE_TABLE(avx512::gemm_tile, uint16_t);
  static constexpr TileTable kBf16Dp = FASTLM_TILE_TABLE(avx512bf16::gemm_tile, uint16_t);
#endif
  switch (active_isa()) {
    case Isa::kAvx512Bf16:
#if defined(__x86_64__)
      // 24 accumulators + 3 weight vectors + 1 x vector of the 32 zmm registers.
      if (w_bf16) return {&kBf16Dp, 4, 3, true};
      return {&kAvx512F32, 4, 3, false};
#endif
      [[fallthrough]];
    case Isa::kAvx512:
#if defined(__x86_64__)
      return {w_bf16 ? &kAvx512Bf16 : &kAvx512F32, 4, 3, false};
#endif
      [[fallthrough]];
    case Isa::kAvx2:
#if defined(__x86_64__)
      // 12 accumulators + 2 weight vectors + 1 x vector of the 16 ymm registers.
      return {w_bf16 ? &kAvx2Bf16 : &kAvx2F32, 3, 2, false};
#endif
      [[fallthrough]];
    case Isa::kScalar:
      return {w_bf16 ? &kScalarBf16 : &kScalarF32, 4, 2, false};
  }
  return {w_bf16 ? &kScalarBf16 : &kScalarF32, 4, 2, false};
}

#undef FASTLM_TILE_TABLE
#undef FASTLM_TILE_ROW1
#undef FASTLM_TILE_ROW3

// x staged as the kernels read it: rows padded with zeros to ldx, rounded to bf16 when the
// weights are bf16 (as float values, or as bf16 bits for vdpbf16ps).
const void* stage_x(const float* x, int64_t m, int64_t k, int64_t ldx, bool w_bf16, bool x_bits) {
  thread_local std::vector<float> xf;
  thread_local std::vector<uint16_t> xb;
  const bool parallel = m * k >= (1 << 16);
  if (x_bits) {
    xb.assign(static_cast<size_t>(m * ldx), 0);
    uint16_t* dst = xb.data();  // the thread_local names each thread's own copy inside omp
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t r = 0; r < m; ++r)
      for (int64_t i = 0; i < k; ++i) dst[r * ldx + i] = f32_to_bf16(x[r * k + i]);
    return dst;
  }
  xf.assign(static_cast<size_t>(m * ldx), 0.0f);
  float* dst = xf.data();
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t r = 0; r < m; ++r)
    for (int64_t i = 0; i < k; ++i) {
      const float v = x[r * k + i];
      dst[r * ldx + i] = w_bf16 ? bf16_to_f32(f32_to_bf16(v)) : v;
    }
  return dst;
}

// Weight rows [n0, n1) of y for every row of x. Which tile computes an element never changes
// its arithmetic, so the blocking below is free to follow the cache.
void run_cols(const Path& p, const void* x, int64_t ldx, const void* w, bool w_bf16, int64_t k,
              const float* bias, float* y, int64_t m, int64_t n, int64_t n0, int64_t n1) {
  const int64_t wsize = w_bf16 ? 2 : 4;
  const int64_t xsize = p.x_bf16 ? 2 : 4;
  const char* xb = static_cast<const char*>(x);
  const char* wb = static_cast<const char*>(w);
  // Columns [c0, c1) for rows [m0, m0 + mr), nr weight rows per tile and 1 for the remainder.
  auto span = [&](int mr, int nr, int64_t m0, int64_t c0, int64_t c1) {
    const int64_t full = (c1 - c0) / nr * nr;
    const auto run = [&](int tile_nr, int64_t c, int64_t cols) {
      (*p.tiles)[mr - 1][tile_nr - 1](xb + m0 * ldx * xsize, ldx, wb + c * k * wsize, k,
                                      bias ? bias + c : nullptr, y + m0 * n + c, n, cols);
    };
    if (full > 0) run(nr, c0, full);
    if (c0 + full < c1) run(1, c0 + full, c1 - c0 - full);
  };
  if (m <= kGemvMaxRows) {
    // Decode: one sequential stream per weight row, all rows of x at once (measured on Zen 4,
    // interleaving 2-4 weight rows to reuse x loads lost up to half the bandwidth).
    span(static_cast<int>(m), 1, 0, n0, n1);
    return;
  }
  const int64_t block =
      std::max<int64_t>(p.nr, kBlockBytes / (std::max<int64_t>(k, 1) * wsize) / p.nr * p.nr);
  for (int64_t c = n0; c < n1; c += block) {
    const int64_t ce = std::min(n1, c + block);
    for (int64_t m0 = 0; m0 < m;) {
      // The last two tiles share the rows evenly (16 = 3+3+3+3+2+2, not ...+3+1): a one-row
      // tile reads the weight block for a third of the work.
      const int64_t left = m - m0;
      const int64_t mr =
          left > p.mr && left < 2 * p.mr ? (left + 1) / 2 : std::min<int64_t>(p.mr, left);
      span(static_cast<int>(mr), p.nr, m0, c, ce);
      m0 += mr;
    }
  }
}

}  // namespace

void gemm_canonical(const float* x, const void* w, bool w_bf16, const float* bias, float* y,
                    int64_t m, int64_t n, int64_t k) {
  if (m == 0 || n == 0) return;
  const Path p = pick_path(w_bf16);
  const int64_t ldx = round_up(std::max<int64_t>(k, 1), kXPad);
  const void* xs = stage_x(x, m, k, ldx, w_bf16, p.x_bf16);
  const int threads = omp_get_max_threads();
  // Bytes of weights plus flops per weight row: small problems stay on the calling thread.
  const int64_t work = n * k * ((w_bf16 ? 2 : 4) + m);
  if (threads <= 1 || work < (64 << 10))
    return run_cols(p, xs, ldx, w, w_bf16, k, bias, y, m, n, 0, n);
  // Threads split the weight rows (output columns) only, in multiples of 16 rows.
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    const int nt = omp_get_num_threads();
    const int64_t chunk = round_up((n + nt - 1) / nt, 16);
    const int64_t begin = std::min<int64_t>(n, t * chunk);
    const int64_t end = std::min<int64_t>(n, begin + chunk);
    if (begin < end) run_cols(p, xs, ldx, w, w_bf16, k, bias, y, m, n, begin, end);
  }
}

}  // namespace fastlm::cpu
