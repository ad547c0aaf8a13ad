#include "cpu/gemm_cpu.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "cpu/convert_cpu.h"
#include "cpu/cpu_common.h"
#include "cpu/gemm_pack.h"
#include "cpu/isa.h"
#include "cpu/simd.h"

#if defined(__x86_64__)
// GCC 12's AVX-512 headers use _mm512_undefined_*() operands that trip this warning.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace fastlm::cpu {

namespace {

// K per cache block of the large-M loop (a multiple of 2: bf16 pairs never straddle blocks):
// one panel's slice of it (8 KiB in bf16) stays in L1 while every row tile passes over it.
constexpr int64_t kKBlock = 256;
// Rows of x per cache block (with kKBlock: 96 KiB of x, in L2).
constexpr int64_t kMBlock = 96;
constexpr int kMaxMR = 8;
// bf16 elements (1 KiB) ahead of each panel stream that the decode tiles (MR <= 2) prefetch:
// the streamed 30-layer bf16 GEMV of SmolLM2 took 14% less CPU time with it (one thread).
constexpr int64_t kPrefetchElems = 1024 / 2;

// A tile: MR rows of x (ldx apart) against NP panels starting at w (pstride elements apart),
// k in [k0, k1), into y (ldy apart; panel i at y + i * kPanel).
using TileFn = void (*)(const void* x, int64_t ldx, const void* w, int64_t pstride, int64_t k0,
                        int64_t k1, float* y, int64_t ldy, bool resume);

// ---- portable: the same chain, one element at a time ----

template <int MR, int NP, bool BF16>
void tile_scalar(const void* xv, int64_t ldx, const void* wv, int64_t pstride, int64_t k0,
                 int64_t k1, float* y, int64_t ldy, bool resume) {
  const float* x = static_cast<const float*>(xv);
  for (int r = 0; r < MR; ++r) {
    for (int64_t c = 0; c < NP * kPanel; ++c) {
      const int64_t panel = (c / kPanel) * pstride, lane = c % kPanel;
      float s = resume ? y[r * ldy + c] : 0.0f;
      for (int64_t i = k0; i < k1; ++i) {
        float w;
        if constexpr (BF16) {
          w = bf16_to_f32(
              static_cast<const uint16_t*>(wv)[panel + (i / 2) * 2 * kPanel + lane * 2 + i % 2]);
        } else {
          w = static_cast<const float*>(wv)[panel + i * kPanel + lane];
        }
        s = std::fma(w, x[r * ldx + i], s);
      }
      y[r * ldy + c] = s;
    }
  }
}

#if defined(__x86_64__)

// ---- AVX2 + FMA (the baseline flags) ----
namespace avx2 {
struct Vec {
  using V = __m256;
  static constexpr int64_t kLanes = 8;
  static FASTLM_INLINE V zero() { return _mm256_setzero_ps(); }
  static FASTLM_INLINE V load(const float* p) { return _mm256_loadu_ps(p); }
  static FASTLM_INLINE void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static FASTLM_INLINE V bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static FASTLM_INLINE V fma(V acc, V w, V x) { return _mm256_fmadd_ps(w, x, acc); }
  static FASTLM_INLINE V even(const uint16_t* p) {
    return _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), 16));
  }
  static FASTLM_INLINE V odd(const uint16_t* p) {
    return _mm256_castsi256_ps(
        _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)),
                         _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
  }
};
#define FASTLM_TILE_TARGET
#include "cpu/gemm_tile.h"
#undef FASTLM_TILE_TARGET
}  // namespace avx2

// ---- AVX-512 F/BW/VL: the same chain, 16 lanes ----
namespace avx512 {
struct Vec {
  using V = __m512;
  static constexpr int64_t kLanes = 16;
  static FASTLM_AVX512 FASTLM_INLINE V zero() { return _mm512_setzero_ps(); }
  static FASTLM_AVX512 FASTLM_INLINE V load(const float* p) { return _mm512_loadu_ps(p); }
  static FASTLM_AVX512 FASTLM_INLINE void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static FASTLM_AVX512 FASTLM_INLINE V bcast(const float* p) { return _mm512_set1_ps(*p); }
  static FASTLM_AVX512 FASTLM_INLINE V fma(V acc, V w, V x) { return _mm512_fmadd_ps(w, x, acc); }
  static FASTLM_AVX512 FASTLM_INLINE V even(const uint16_t* p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_loadu_si512(p), 16));
  }
  static FASTLM_AVX512 FASTLM_INLINE V odd(const uint16_t* p) {
    return _mm512_castsi512_ps(
        _mm512_and_si512(_mm512_loadu_si512(p), _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
  }
};
#define FASTLM_TILE_TARGET FASTLM_AVX512
#include "cpu/gemm_tile.h"
#undef FASTLM_TILE_TARGET
}  // namespace avx512

// ---- AVX512-BF16: vdpbf16ps on the bf16 pairs; x staged as bf16 bits ----
namespace avx512bf16 {
template <int MR, int NP, bool BF16>
FASTLM_AVX512BF16 void gemm_tile(const void* xv, int64_t ldx, const void* wv, int64_t pstride,
                                 int64_t k0, int64_t k1, float* y, int64_t ldy, bool resume) {
  static_assert(BF16, "vdpbf16ps takes bf16 weights");
  const uint16_t* x = static_cast<const uint16_t*>(xv);
  const uint16_t* w = static_cast<const uint16_t*>(wv);
  __m512 acc[MR][NP];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 16
    for (int p = 0; p < NP; ++p)
      acc[r][p] = resume ? _mm512_loadu_ps(y + r * ldy + p * kPanel) : _mm512_setzero_ps();
  for (int64_t i = k0; i < k1; i += 2) {
    __m512i wk[NP];
#pragma GCC unroll 16
    for (int p = 0; p < NP; ++p) wk[p] = _mm512_loadu_si512(w + p * pstride + i * kPanel);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      int32_t pair;
      std::memcpy(&pair, x + r * ldx + i, sizeof(pair));
      const __m512i xb = _mm512_set1_epi32(pair);
#pragma GCC unroll 16
      for (int p = 0; p < NP; ++p)
        acc[r][p] = _mm512_dpbf16_ps(acc[r][p], (__m512bh)wk[p], (__m512bh)xb);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 16
    for (int p = 0; p < NP; ++p) _mm512_storeu_ps(y + r * ldy + p * kPanel, acc[r][p]);
}
}  // namespace avx512bf16

#endif  // __x86_64__

// Per ISA path and weight dtype: tiles[mr - 1][np - 1] computes mr rows x np panels.
constexpr int kMaxNP = 4;
using TileTable = TileFn[kMaxMR][kMaxNP];

#define FASTLM_TILE_ROW(fn, mr, bf16) \
  {&fn<mr, 1, bf16>, &fn<mr, 2, bf16>, &fn<mr, 3, bf16>, &fn<mr, 4, bf16>}
#define FASTLM_TILES(fn, bf16)                                                               \
  {FASTLM_TILE_ROW(fn, 1, bf16), FASTLM_TILE_ROW(fn, 2, bf16), FASTLM_TILE_ROW(fn, 3, bf16), \
   FASTLM_TILE_ROW(fn, 4, bf16), FASTLM_TILE_ROW(fn, 5, bf16), FASTLM_TILE_ROW(fn, 6, bf16), \
   FASTLM_TILE_ROW(fn, 7, bf16), FASTLM_TILE_ROW(fn, 8, bf16)}

struct Path {
  const TileTable* tiles;
  // Panels per tile for mr rows, np[mr - 1]: about 12 (AVX2, 16 registers) or 24 (AVX-512, 32
  // registers) accumulators, so a few rows (decode) still have enough independent fma chains.
  const int* np;
  int mr;       // rows of the widest tile
  bool x_bits;  // x staged as bf16 bits (vdpbf16ps) rather than floats
};

// Rows of the widest AVX2 tile: 6 x 1 panel = 12 accumulators, 2 weight vectors and one
// broadcast of the 16 ymm registers.
constexpr int kAvx2Rows = 6;

Path pick_path(bool w_bf16) {
  static constexpr int kNpScalar[kMaxMR] = {1, 1, 1, 1, 1, 1, 1, 1};
  static constexpr TileTable kScalarF32 = FASTLM_TILES(tile_scalar, false);
  static constexpr TileTable kScalarBf16 = FASTLM_TILES(tile_scalar, true);
#if defined(__x86_64__)
  static constexpr int kNpAvx2[kMaxMR] = {4, 3, 2, 1, 1, 1, 1, 1};
  static constexpr TileTable kAvx2F32 = FASTLM_TILES(avx2::gemm_tile, false);
  static constexpr TileTable kAvx2Bf16 = FASTLM_TILES(avx2::gemm_tile, true);
  static constexpr int kNp512[kMaxMR] = {4, 4, 4, 4, 4, 4, 3, 3};
  static constexpr TileTable kAvx512F32 = FASTLM_TILES(avx512::gemm_tile, false);
  static constexpr TileTable kAvx512Bf16 = FASTLM_TILES(avx512::gemm_tile, true);
  static constexpr TileTable kBf16Dp = FASTLM_TILES(avx512bf16::gemm_tile, true);
#endif
  switch (active_isa()) {
    case Isa::kAvx512Bf16:
#if defined(__x86_64__)
      if (w_bf16) return {&kBf16Dp, kNp512, 8, true};
      return {&kAvx512F32, kNp512, 8, false};
#endif
      [[fallthrough]];
    case Isa::kAvx512:
#if defined(__x86_64__)
      return {w_bf16 ? &kAvx512Bf16 : &kAvx512F32, kNp512, 8, false};
#endif
      [[fallthrough]];
    case Isa::kAvx2:
#if defined(__x86_64__)
      return {w_bf16 ? &kAvx2Bf16 : &kAvx2F32, kNpAvx2, kAvx2Rows, false};
#endif
      [[fallthrough]];
    case Isa::kScalar:
      return {w_bf16 ? &kScalarBf16 : &kScalarF32, kNpScalar, 4, false};
  }
  return {w_bf16 ? &kScalarBf16 : &kScalarF32, kNpScalar, 4, false};
}

#undef FASTLM_TILES
#undef FASTLM_TILE_ROW

// x as the tiles read it: with bf16 weights rounded to bf16 (as floats, or as bits for
// vdpbf16ps) in rows of k2 with the padding k zeroed; float32 weights read x in place.
const void* stage_x(const float* x, int64_t m, int64_t k, int64_t k2, bool w_bf16, bool x_bits,
                    int64_t& ldx) {
  if (!w_bf16) {
    ldx = k;
    return x;
  }
  ldx = k2;
  thread_local std::vector<float> xf;
  thread_local std::vector<uint16_t> xb;
  const bool parallel = m * k >= (1 << 16);
  if (x_bits) {
    xb.assign(static_cast<size_t>(m * k2), 0);
    uint16_t* dst = xb.data();  // the thread_local names each thread's own copy inside omp
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t r = 0; r < m; ++r) f32_to_bf16_n(x + r * k, dst + r * k2, k);
    return dst;
  }
  xf.assign(static_cast<size_t>(m * k2), 0.0f);
  float* dst = xf.data();
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t r = 0; r < m; ++r)
    for (int64_t i = 0; i < k; ++i) dst[r * k2 + i] = bf16_to_f32(f32_to_bf16(x[r * k + i]));
  return dst;
}

// Output panels [pa, pb) of y for every row of x. Which tile, row block or K block computes an
// element never changes its chain, so the blocking below is free to follow the cache.
void run_panels(const Path& p, const void* x, int64_t ldx, const PackedWeights& w,
                const float* bias, float* y, int64_t m, int64_t pa, int64_t pb) {
  const int64_t n = w.n, k2 = w.k2, pe = w.panel_elems;
  const int64_t xsize = p.x_bits ? 2 : 4;
  const char* xc = static_cast<const char*>(x);
  const char* wc = static_cast<const char*>(w.data);
  const int64_t wsize = w.bf16 ? 2 : 4;
  // The partial last panel (n % kPanel columns) accumulates in a scratch of whole panels.
  const bool tail = pb == w.panels() && n % kPanel != 0;
  const int64_t full_end = tail ? pb - 1 : pb;
  std::vector<float> scratch(tail ? static_cast<size_t>(m * kPanel) : 0);
  // Decode-sized M streams each panel once over all of K; larger M blocks K and rows.
  const int64_t kc = m <= kGemvMaxRows ? k2 : kKBlock;
  const int64_t mc = m <= kGemvMaxRows ? m : kMBlock;
  for (int64_t k0 = 0; k0 < k2; k0 += kc) {
    const int64_t k1 = std::min(k2, k0 + kc);
    const bool resume = k0 > 0;
    for (int64_t m0 = 0; m0 < m; m0 += mc) {
      const int64_t m1 = std::min(m, m0 + mc);
      // Row tiles of [m0, m1): the widest tile, the last two sharing the rows evenly
      // (16 = 6+5+5, not 6+6+4... any split computes the same numbers).
      auto rows = [&](auto&& fn) {
        for (int64_t r0 = m0; r0 < m1;) {
          const int64_t left = m1 - r0;
          const int64_t mr =
              left > p.mr && left < 2 * p.mr ? (left + 1) / 2 : std::min<int64_t>(p.mr, left);
          fn(static_cast<int>(mr), r0);
          r0 += mr;
        }
      };
      auto tile = [&](int mr, int64_t r0, int np, int64_t panel, float* dst, int64_t ldy) {
        (*p.tiles)[mr - 1][np - 1](xc + r0 * ldx * xsize, ldx, wc + panel * pe * wsize, pe, k0, k1,
                                   dst, ldy, resume);
      };
      // Panels at a time: the fewest any row tile of this block takes (the widest tile keeps
      // one panel; a block of a few rows takes several, for enough independent chains).
      int np = 4;
      rows([&](int mr, int64_t) { np = std::min(np, p.np[mr - 1]); });
      for (int64_t q = pa; q < full_end; q += np) {
        const int g = static_cast<int>(std::min<int64_t>(np, full_end - q));
        rows([&](int mr, int64_t r0) { tile(mr, r0, g, q, y + r0 * n + q * kPanel, n); });
      }
      if (tail) {
        rows([&](int mr, int64_t r0) {
          tile(mr, r0, 1, pb - 1, scratch.data() + r0 * kPanel, kPanel);
        });
      }
    }
  }
  // y = s + bias, the last step of every chain.
  const int64_t c0 = pa * kPanel, c1 = std::min(n, full_end * kPanel);
  for (int64_t r = 0; r < m; ++r) {
    float* yr = y + r * n;
    if (bias != nullptr)
      for (int64_t c = c0; c < c1; ++c) yr[c] += bias[c];
    if (tail) {
      const int64_t base = (pb - 1) * kPanel;
      for (int64_t c = base; c < n; ++c)
        yr[c] = scratch[r * kPanel + (c - base)] + (bias ? bias[c] : 0.0f);
    }
  }
}

}  // namespace

void gemm_canonical(const float* x, const void* w, bool w_bf16, const float* bias, float* y,
                    int64_t m, int64_t n, int64_t k) {
  if (m == 0 || n == 0) return;
  std::shared_ptr<const PackedWeights> registered = find_packed(w, w_bf16, n, k);
  thread_local PackedWeights per_call;
  const PackedWeights* pw = registered.get();
  if (pw == nullptr) {
    pack_into(w, w_bf16, n, k, per_call);
    pw = &per_call;
  }
  const Path p = pick_path(w_bf16);
  int64_t ldx = 0;
  const void* xs = stage_x(x, m, k, pw->k2, w_bf16, p.x_bits, ldx);
  const int threads = omp_get_max_threads();
  const int64_t panels = pw->panels();
  // Bytes of weights plus flops per weight row: small problems stay on the calling thread.
  const int64_t work = n * k * ((w_bf16 ? 2 : 4) + m);
  if (threads <= 1 || work < (64 << 10) || panels < 2)
    return run_panels(p, xs, ldx, *pw, bias, y, m, 0, panels);
  // Threads split the output panels only: decode-sized M (memory bound: streaming the weights)
  // claims them in shrinking chunks, so no thread waits long for the other at the end.
  if (m <= kGemvMaxRows) {
    ChunkClaims claims(panels, 4, threads);
#pragma omp parallel num_threads(threads)
    {
      int64_t begin = 0, end = 0;
      while (claims.claim(begin, end)) run_panels(p, xs, ldx, *pw, bias, y, m, begin, end);
    }
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    const int nt = omp_get_num_threads();
    const int64_t chunk = (panels + nt - 1) / nt;
    const int64_t begin = std::min<int64_t>(panels, t * chunk);
    const int64_t end = std::min<int64_t>(panels, begin + chunk);
    if (begin < end) run_panels(p, xs, ldx, *pw, bias, y, m, begin, end);
  }
}

}  // namespace fastlm::cpu
