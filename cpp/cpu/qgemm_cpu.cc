#include "cpu/qgemm_cpu.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "core/status.h"
#include "cpu/cpu_common.h"
#include "cpu/isa.h"
#include "cpu/qformats.h"
#include "cpu/simd.h"

#ifndef FASTLM_INLINE  // simd.h defines it on x86 only
#define FASTLM_INLINE inline
#endif

namespace fastlm::cpu {

namespace {

using qfmt::kQK;  // elements per activation block (and per legacy weight block)
#if defined(__x86_64__)
using qfmt::scales4;
#endif

// One activation block of 32 elements as int16: x ~= d * q with d = amax / 32767, so the
// integer products carry 16 bits of each activation (finer than bf16's 8; int8 activations,
// amax / 127, cost 0.002 of logits cosine on the default model). s = d * sum(q), the factor of
// a weight block's minimum.
struct alignas(32) XBlock {
  int16_t q[kQK];
  float d;
  float s;
};

// Eight rows of x, one 32-block, for xtile (M >= 8): q[p][r] holds elements 2p, 2p + 1 of row r
// (vpmaddwd's pairs), then each row's d and s. Rows past M are zero.
struct alignas(32) XLanes {
  int16_t q[16][8][2];
  float dx[8];
  float sx[8];
};

// x rows -> activation blocks, scalar. The AVX2 version below computes the same numbers (max
// and integer sums are exact in any order; the product v * id and its round-to-nearest-even are
// the same IEEE operations), so the quantized activations never depend on the path: the scalar
// vs AVX2 bitwise test of qgemm checks it.
void quantize_x_row_scalar(const float* x, XBlock* out, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b) {
    const float* v = x + b * kQK;
    float amax = 0.0f;
    for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(v[j]));
    const float d = amax / 32767.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    int sum = 0;
    for (int j = 0; j < kQK; ++j) {
      const int q = static_cast<int>(std::clamp(std::nearbyint(v[j] * id), -32767.0f, 32767.0f));
      out[b].q[j] = static_cast<int16_t>(q);
      sum += q;
    }
    out[b].d = d;
    out[b].s = d * static_cast<float>(sum);
  }
}

#if defined(__x86_64__)
void quantize_x_row_avx2(const float* x, XBlock* out, int64_t nb) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 lim = _mm256_set1_ps(32767.0f);
  for (int64_t b = 0; b < nb; ++b) {
    const float* v = x + b * kQK;
    __m256 f[4];
    __m256 amax = _mm256_setzero_ps();
    for (int i = 0; i < 4; ++i) {
      f[i] = _mm256_loadu_ps(v + 8 * i);
      amax = _mm256_max_ps(amax, _mm256_and_ps(f[i], abs_mask));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float d = _mm_cvtss_f32(m4) / 32767.0f;
    const __m256 id = _mm256_set1_ps(d != 0.0f ? 1.0f / d : 0.0f);
    __m256i q[4];
    __m256i sum = _mm256_setzero_si256();
    for (int i = 0; i < 4; ++i) {
      const __m256 r =
          _mm256_round_ps(_mm256_mul_ps(f[i], id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      q[i] = _mm256_cvttps_epi32(
          _mm256_min_ps(_mm256_max_ps(r, _mm256_sub_ps(_mm256_setzero_ps(), lim)), lim));
      sum = _mm256_add_epi32(sum, q[i]);
    }
    // packs interleaves 128-bit lanes: [a0-3 b0-3 a4-7 b4-7] -> element order by a 64-bit permute.
    for (int i = 0; i < 2; ++i)
      _mm256_store_si256(
          reinterpret_cast<__m256i*>(out[b].q + 16 * i),
          _mm256_permute4x64_epi64(_mm256_packs_epi32(q[2 * i], q[2 * i + 1]), 0xd8));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    s4 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 1));
    out[b].d = d;
    out[b].s = d * static_cast<float>(_mm_cvtsi128_si32(s4));
  }
}
#endif

// ---- portable path: the documented order ----
template <class F>
void qcols_scalar(const XBlock* x, int64_t ldx, int64_t m, const uint8_t* w, size_t row_bytes,
                  int64_t nb, const float* bias, float* y, int64_t ldy, int64_t n0, int64_t n1) {
  uint8_t q[kQK];
  for (int64_t c = n0; c < n1; ++c) {
    const uint8_t* row = w + c * row_bytes;
    for (int64_t r = 0; r < m; ++r) {
      float acc = 0.0f;
      for (int64_t b = 0; b < nb; ++b) {
        float dw, mw;
        F::scales(row, b, &dw, &mw);
        F::values_scalar(row, b, q);
        const XBlock& xb = x[r * ldx + b];
        int32_t isum[2] = {};  // elements 0..15, 16..31
        for (int j = 0; j < kQK; ++j) {
          const int v = F::kSigned ? static_cast<int8_t>(q[j]) : q[j];
          isum[j / 16] += v * xb.q[j];
        }
        if (F::kHalfScales) {
          acc = std::fma(dw * xb.d, static_cast<float>(isum[0]), acc);
          acc = std::fma(mw * xb.d, static_cast<float>(isum[1]), acc);
        } else {
          acc = std::fma(dw * xb.d, static_cast<float>(isum[0] + isum[1]), acc);
        }
        if (F::kMin) acc = std::fma(mw, xb.s, acc);
      }
      y[r * ldy + c] = acc + (bias ? bias[c] : 0.0f);
    }
  }
}

// A tile: y[r * ldy + c] for MR rows of x and `cols` weight rows (a multiple of NR). spread 1:
// each pass takes NR adjacent rows. spread > 1 (cols = NR * spread): pass c0 < spread takes rows
// c0, c0 + spread, ..., so the tile reads NR sequential streams side by side; any order computes
// the same numbers.
using QTileFn = void (*)(const XBlock* x, int64_t ldx, const uint8_t* w, size_t row_bytes,
                         int64_t nb, const float* bias, float* y, int64_t ldy, int64_t cols,
                         int64_t spread);
constexpr int kMaxMR = 4;

#if defined(__x86_64__)
// Tiles prefetch the weight rows this many rows ahead (two tiles of 4 at decode): without it the
// Q8_0 lm_head streamed at ~2 GB/s on the EPYC, with it 2.5x faster.
constexpr int64_t kAhead = 8;
// Decode (M <= 4) reads a thread's weight rows as NR streams (QTileFn's spread): one sequential
// stream per core is served at about 3/4 of the rate of four on the Zen 3 VM. Q8_0 GEMVs of
// SmolLM2's shapes, 30 layers cycled, spread and adjacent passes alternating in one process:
// 11.6-15.0 -> 15.5-19.6 GB/s at M = 1, +11-31% at M = 2..4; Q4_0/Q4_1 (more compute per byte)
// +0-25%; K-quants (compute bound) unchanged. A Q8_0 decode step: 11.3 -> 9.2 ms. Each stream
// prefetches its rows this many rows on.
constexpr int64_t kStreamAhead = 2;

namespace avx2 {
FASTLM_INLINE __m256i dot(__m256i w, __m256i x) { return _mm256_madd_epi16(w, x); }
FASTLM_INLINE __m256i dot2(__m256i wl, __m256i xl, __m256i wh, __m256i xh) {
  return _mm256_add_epi32(_mm256_madd_epi16(wl, xl), _mm256_madd_epi16(wh, xh));
}
FASTLM_INLINE __m256i dot_acc(__m256i acc, __m256i w, __m256i x) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(w, x));
}
#define FASTLM_QTILE_TARGET
#include "cpu/qgemm_tile.h"
#undef FASTLM_QTILE_TARGET
}  // namespace avx2

// vpdpwssd on 256-bit registers (AVX512-VNNI + VL): the same exact int32 lanes as madd + add,
// hence the same floats as the AVX2 path, bit for bit.
namespace vnni {
#define FASTLM_QTILE_TARGET __attribute__((target("avx512f,avx512vl,avx512vnni")))
FASTLM_QTILE_TARGET FASTLM_INLINE __m256i dot(__m256i w, __m256i x) {
  return _mm256_dpwssd_epi32(_mm256_setzero_si256(), w, x);
}
FASTLM_QTILE_TARGET FASTLM_INLINE __m256i dot2(__m256i wl, __m256i xl, __m256i wh, __m256i xh) {
  return _mm256_dpwssd_epi32(_mm256_dpwssd_epi32(_mm256_setzero_si256(), wl, xl), wh, xh);
}
FASTLM_QTILE_TARGET FASTLM_INLINE __m256i dot_acc(__m256i acc, __m256i w, __m256i x) {
  return _mm256_dpwssd_epi32(acc, w, x);
}
#include "cpu/qgemm_tile.h"
#undef FASTLM_QTILE_TARGET
}  // namespace vnni

// Tiles per MR: the wide one (NR columns a pass) and the one-column remainder.
struct QTiles {
  QTileFn wide;
  int nr;
  QTileFn one;
};
using QTileTable = QTiles[kMaxMR];
// qlanes: four weight rows a pass in lanes.
#define FASTLM_QLANES(ns, F, mr) {&ns::qlanes<F, mr>, 4, &ns::qlanes_one<F, mr>}
#define FASTLM_QTABLE(ns, F)                                                  \
  {FASTLM_QLANES(ns, F, 1), FASTLM_QLANES(ns, F, 2), FASTLM_QLANES(ns, F, 3), \
   FASTLM_QLANES(ns, F, 4)}

template <class F>
const QTileTable* tiles(bool vnni) {
  static constexpr QTileTable kAvx2 = FASTLM_QTABLE(avx2, F);
  static constexpr QTileTable kVnni = FASTLM_QTABLE(vnni, F);
  return vnni ? &kVnni : &kAvx2;
}
#undef FASTLM_QTABLE
#undef FASTLM_QLANES

// Rows [0, rows) of packed weights -> qfmt::Decoded blocks at out (rows of nb * 96 bytes), with
// the scales the tiles would read (a super-block's once per row).
template <class F>
void decode_rows(const uint8_t* w, size_t row_bytes, int64_t nb, int64_t rows, uint8_t* out) {
  using D = qfmt::Decoded<F>;
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* row = w + r * row_bytes;
    uint8_t* dst = out + r * nb * static_cast<int64_t>(D::kBytes);
    alignas(32) float sup[16];
    for (int64_t b = 0; b < nb; ++b) {
      __m256i lo, hi;
      F::values16(row, b, &lo, &hi);
      auto* q = reinterpret_cast<__m256i*>(dst + b * D::kBytes);
      _mm256_store_si256(q, lo);
      _mm256_store_si256(q + 1, hi);
      __m128 dm;
      if constexpr (avx2::kSuper<F>) {
        if (b % 8 == 0) F::super_scales(row + b / 8 * F::kBytes, sup);
        dm = avx2::super_dm<F>(sup, b);
      } else {
        dm = scales4<F>(row, b);
      }
      _mm_storel_pi(reinterpret_cast<__m64*>(dst + b * D::kBytes + 64), dm);
    }
  }
}

bool cpu_has_vnni() {
  static const bool has =
      __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl");
  return has;
}
#endif

enum class Path { kScalar, kAvx2, kVnni };

Path pick_path() {
  switch (active_isa()) {
    case Isa::kAvx512Bf16:
    case Isa::kAvx512:
#if defined(__x86_64__)
      if (cpu_has_vnni()) return Path::kVnni;
#endif
      [[fallthrough]];
    case Isa::kAvx2:
#if defined(__x86_64__)
      return Path::kAvx2;
#endif
      [[fallthrough]];
    case Isa::kScalar:
      return Path::kScalar;
  }
  return Path::kScalar;
}

// Bytes of packed weight rows per cache block of the tiled path (stays in L2 while every tile
// of x rows passes over it).
constexpr int64_t kBlockBytes = 96 << 10;
// Up to this many rows of x run as one pass over the weights (decode and small batches).
constexpr int64_t kStreamRows = kMaxMR;
// From this many rows of x, xtile over each cache block of weight rows decoded once (rows of
// qfmt::Decoded, about kDecodedBytes a block, in L2 with the x tiles); below, qlanes on the packed
// rows (a group of eight padded with zero rows cost 1.2x qlanes' time at M = 5).
constexpr int64_t kLanesRows = 8;
constexpr int64_t kDecodedBytes = 192 << 10;

#if defined(__x86_64__)
// xtile's shapes: two groups of eight x rows (16 rows) x 3 weight rows, one group x 6 (both 15
// or 14 registers of accumulators and operands), and their one-row remainders.
using XTileFn = void (*)(const XLanes*, int64_t, const uint8_t*, size_t, int64_t, const float*,
                         float*, int64_t, int64_t, int64_t);
struct XTiles {
  XTileFn two, two_one;  // MG 2: NR 3, NR 1
  XTileFn one, one_one;  // MG 1: NR 6, NR 1
  int64_t two_nr, one_nr;
};
#define FASTLM_XTILES(ns, Min, Half) \
  {&ns::xtile<Min, Half, 2, 3>,      \
   &ns::xtile<Min, Half, 2, 1>,      \
   &ns::xtile<Min, Half, 1, 6>,      \
   &ns::xtile<Min, Half, 1, 1>,      \
   3,                                \
   6}
template <bool Min, bool Half>
const XTiles* xtiles(bool vnni) {
  static constexpr XTiles kAvx2 = FASTLM_XTILES(avx2, Min, Half);
  static constexpr XTiles kVnni = FASTLM_XTILES(vnni, Min, Half);
  return vnni ? &kVnni : &kAvx2;
}
#undef FASTLM_XTILES

// M >= kLanesRows: each cache block of weight rows is decoded once (qfmt::Decoded) and every pair
// of x-row groups (XLanes, built once per call) runs xtile over it. In-process A/B against the
// earlier per-lane order's register tiles, 2 threads, Zen 3, M = 256: 1.5-2.3x by format.
template <class F>
void run_lanes(Path path, const XBlock* x, const XLanes* xl, int64_t m, const uint8_t* w,
               size_t row_bytes, int64_t nb, const float* bias, float* y, int64_t ldy, int64_t n0,
               int64_t n1) {
  using D = qfmt::Decoded<F>;
  const XTiles& t = *xtiles<F::kMin, F::kHalfScales>(path == Path::kVnni);
  // Rows past the last full group of eight: up to kMaxMR through the small-M tiles (on the
  // packed rows, in L2 after the decode), more as a padded group.
  const int64_t rest = m % 8 <= kMaxMR ? m % 8 : 0;
  const int64_t groups = (m - rest + 7) / 8;
  const QTiles& small = (*tiles<F>(path == Path::kVnni))[std::max<int64_t>(rest, 1) - 1];
  const int64_t dec_row = nb * static_cast<int64_t>(D::kBytes);
  // A cache block: a multiple of both xtile widths (3, 6) of decoded rows, 32-byte aligned.
  const int64_t block = std::max<int64_t>(6, kDecodedBytes / dec_row / 6 * 6);
  thread_local std::vector<uint8_t> scratch;
  scratch.resize(static_cast<size_t>(block * dec_row + 32));
  uint8_t* dec = scratch.data() + (-reinterpret_cast<uintptr_t>(scratch.data()) & 31);
  for (int64_t c = n0; c < n1; c += block) {
    const int64_t cols = std::min(n1, c + block) - c;
    decode_rows<F>(w + c * row_bytes, row_bytes, nb, cols, dec);
    const float* bc = bias ? bias + c : nullptr;
    if (rest > 0) {
      const int64_t m0 = m - rest, full = cols / small.nr * small.nr;
      const uint8_t* wc = w + c * row_bytes;
      if (full > 0)
        small.wide(x + m0 * nb, nb, wc, row_bytes, nb, bc, y + m0 * ldy + c, ldy, full, 1);
      if (full < cols)
        small.one(x + m0 * nb, nb, wc + full * row_bytes, row_bytes, nb, bc ? bc + full : nullptr,
                  y + m0 * ldy + c + full, ldy, cols - full, 1);
    }
    for (int64_t g = 0; g < groups; g += 2) {
      const bool two = g + 1 < groups;
      const int64_t rows = std::min<int64_t>(m - rest - g * 8, 16);
      const int64_t nr = two ? t.two_nr : t.one_nr;
      const int64_t full = cols / nr * nr;
      const XLanes* xg = xl + g * nb;
      float* yg = y + g * 8 * ldy + c;
      if (full > 0) (two ? t.two : t.one)(xg, nb, dec, dec_row, nb, bc, yg, ldy, full, rows);
      if (full < cols)
        (two ? t.two_one : t.one_one)(xg, nb, dec + full * dec_row, dec_row, nb,
                                      bc ? bc + full : nullptr, yg + full, ldy, cols - full, rows);
    }
  }
}

// x's blocks -> XLanes: groups of eight rows (the last one padded with zero rows).
void build_lanes(const XBlock* xs, int64_t nb, int64_t m, XLanes* out) {
  const int64_t groups = (m + 7) / 8;
  parallel_for(groups * nb, m * nb >= 4096, [&](int64_t i) {
    const int64_t g = i / nb, b = i % nb;
    XLanes& o = out[i];
    for (int r = 0; r < 8; ++r) {
      const int64_t row = g * 8 + r;
      if (row >= m) {
        for (int p = 0; p < 16; ++p) std::memset(o.q[p][r], 0, 4);
        o.dx[r] = o.sx[r] = 0.0f;
        continue;
      }
      const XBlock& xb = xs[row * nb + b];
      for (int p = 0; p < 16; ++p) std::memcpy(o.q[p][r], xb.q + 2 * p, 4);
      o.dx[r] = xb.d;
      o.sx[r] = xb.s;
    }
  });
}
#endif

template <class F>
void run_cols(Path path, const XBlock* x, const XLanes* xl, int64_t ldx, int64_t m,
              const uint8_t* w, size_t row_bytes, int64_t nb, const float* bias, float* y,
              int64_t ldy, int64_t n0, int64_t n1) {
  if (path == Path::kScalar)
    return qcols_scalar<F>(x, ldx, m, w, row_bytes, nb, bias, y, ldy, n0, n1);
#if defined(__x86_64__)
  if (m >= kLanesRows) return run_lanes<F>(path, x, xl, m, w, row_bytes, nb, bias, y, ldy, n0, n1);
  const QTileTable& t = *tiles<F>(path == Path::kVnni);
  // spread: the tile's NR rows a pass from NR parts of [c0, c1) (decode streams) or adjacent.
  const auto span = [&](int64_t mr, int64_t m0, int64_t c0, int64_t c1, bool spread) {
    const QTiles& tt = t[mr - 1];
    const int64_t full = (c1 - c0) / tt.nr * tt.nr;
    if (full > 0)
      tt.wide(x + m0 * ldx, ldx, w + c0 * row_bytes, row_bytes, nb, bias ? bias + c0 : nullptr,
              y + m0 * ldy + c0, ldy, full, spread ? full / tt.nr : 1);
    if (c0 + full < c1)
      tt.one(x + m0 * ldx, ldx, w + (c0 + full) * row_bytes, row_bytes, nb,
             bias ? bias + c0 + full : nullptr, y + m0 * ldy + c0 + full, ldy, c1 - c0 - full, 1);
  };
  if (m <= kStreamRows) return span(m, 0, n0, n1, true);
  const int64_t block = std::max<int64_t>(4, kBlockBytes / static_cast<int64_t>(row_bytes) / 4 * 4);
  for (int64_t c = n0; c < n1; c += block) {
    const int64_t ce = std::min(n1, c + block);
    for (int64_t m0 = 0; m0 < m;) {
      const int64_t left = m - m0;
      // The last two tiles share the rows evenly (6 = 3 + 3, not 4 + 2).
      const int64_t mr =
          left > kMaxMR && left < 2 * kMaxMR ? (left + 1) / 2 : std::min<int64_t>(kMaxMR, left);
      span(mr, m0, c, ce, false);
      m0 += mr;
    }
  }
#endif
}

using RunFn = void (*)(Path, const XBlock*, const XLanes*, int64_t, int64_t, const uint8_t*, size_t,
                       int64_t, const float*, float*, int64_t, int64_t, int64_t);

RunFn runner(QType type) {
  return qfmt::visit(type, [](auto f) -> RunFn { return &run_cols<decltype(f)>; });
}

int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

}  // namespace

bool qgemm_supports(QType type) { return runner(type) != nullptr; }

const char* qgemm_path() {
  switch (pick_path()) {
    case Path::kScalar:
      return "scalar";
    case Path::kAvx2:
      return "avx2";
    case Path::kVnni:
      return "vnni";
  }
  return "?";
}

void qgemm(const float* x, const void* w, QType type, const float* bias, float* y, int64_t m,
           int64_t n, int64_t k, int64_t ldy) {
  const QgemmPart part{w, type, n, bias, y};
  qgemm_parts(x, &part, 1, m, k, ldy == 0 ? n : ldy);
}

void qgemm_parts(const float* x, const QgemmPart* parts, int count, int64_t m, int64_t k,
                 int64_t ldy) {
  int64_t n = 0, work = 0;
  for (int i = 0; i < count; ++i) {
    const QgemmPart& p = parts[i];
    FASTLM_CHECK_ARG(runner(p.type) != nullptr, "qgemm: no kernel for ", qtype_name(p.type));
    FASTLM_CHECK_ARG(k % qtype_block_elems(p.type) == 0, "qgemm: K = ", k,
                     " is not a multiple of the ", qtype_name(p.type), " block size");
    n += p.n;
    work += p.n * static_cast<int64_t>(qtype_row_bytes(p.type, k)) * (1 + m);
  }
  if (m == 0 || n == 0) return;
  FASTLM_CHECK_ARG(ldy >= n, "qgemm: ldy = ", ldy, " is below n = ", n);
  const int64_t nb = k / kQK;
  thread_local std::vector<XBlock> xq;
  xq.resize(static_cast<size_t>(m * nb));
  XBlock* xs = xq.data();  // the thread_local names each thread's own copy inside omp
  const Path path = pick_path();
#if defined(__x86_64__)
  const auto quantize_x_row = path == Path::kScalar ? &quantize_x_row_scalar : &quantize_x_row_avx2;
#else
  const auto quantize_x_row = &quantize_x_row_scalar;
#endif
  parallel_for(m, m * k >= (1 << 16),
               [&](int64_t r) { quantize_x_row(x + r * k, xs + r * nb, nb); });
  // xtile's x rows in lanes, once for all threads.
  thread_local std::vector<XLanes> xlanes;
  XLanes* xl = nullptr;
#if defined(__x86_64__)
  if (path != Path::kScalar && m >= kLanesRows) {
    xlanes.resize(static_cast<size_t>((m + 7) / 8 * nb));
    xl = xlanes.data();
    build_lanes(xs, nb, m, xl);
  }
#endif

  // Rows [begin, end) of the parts stacked: each part's overlap, through its own kernel.
  const auto run_rows = [&](int64_t begin, int64_t end) {
    int64_t at = 0;
    for (int i = 0; i < count && at < end; at += parts[i].n, ++i) {
      const QgemmPart& p = parts[i];
      const int64_t b = std::max(begin, at) - at, e = std::min(end, at + p.n) - at;
      if (b >= e) continue;
      runner(p.type)(path, xs, xl, nb, m, static_cast<const uint8_t*>(p.w),
                     qtype_row_bytes(p.type, k), nb, p.bias, p.y, ldy, b, e);
    }
  };
  const int threads = omp_get_max_threads();
  if (threads <= 1 || work < (64 << 10)) return run_rows(0, n);
  if (m >= kLanesRows) {
    // Prefill-sized: the weight rows claimed in shrinking chunks (multiples of both xtile widths
    // and of 16), so a thread slowed by the VM does not leave the other waiting at the end.
    ChunkClaims claims(n, 48, threads);
#pragma omp parallel num_threads(threads)
    {
      int64_t begin = 0, end = 0;
      while (claims.claim(begin, end)) run_rows(begin, end);
    }
    return;
  }
  // Threads split the weight rows (output columns) only, in multiples of 16 rows.
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    const int nt = omp_get_num_threads();
    const int64_t chunk = round_up((n + nt - 1) / nt, 16);
    const int64_t begin = std::min<int64_t>(n, t * chunk);
    run_rows(begin, std::min<int64_t>(n, begin + chunk));
  }
}

}  // namespace fastlm::cpu
