#include "cpu/paged_attention_cpu.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/batch_invariant.h"
#include "cpu/cpu_common.h"
#include "cpu/isa.h"
#include "cpu/simd.h"

#if defined(__x86_64__)
// GCC 12's AVX-512 headers use _mm512_undefined_*() operands that trip this warning.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

// Flash-attention style: each work item owns a block of query rows of one sequence x one KV
// head (all query heads of the GQA group) and a range of KV positions, walked in tiles of kTile
// keys, with an online softmax in f32 (running max m, sum l, acc rescaled by exp(m_old - m_new)).
// Two ways to run a tile:
//   - block path (prefill, or large GQA groups): the tile's K is converted once into a
//     transposed f32 scratch [d][kTile] and V into [kTile][d], then reused by every query of the
//     block (up to ~192 query vectors), so conversion is amortized; S = Q K^T and acc += P V are
//     register-blocked GEMM micro-kernels with no horizontal reductions.
//   - streaming path (decode: at most 4 query vectors): K and V rows are read straight from the
//     cache (bf16 widened in registers), each row once, with no scratch copy.
// Everything accumulates in f32 (bf16 K/V are exact in f32), so results match an f64 reference
// to ~1e-6 relative. When there are too few items to occupy every thread (one decoding
// sequence), the KV range is split into parts whose partial (m, l, acc) are merged afterwards
// (flash-decoding).
// Batch invariance (cpu/batch_invariant.h): a query row's arithmetic must depend only on q and
// its own KV positions. So tiles start at multiples of kTile (absolute positions), decode
// computes scores in the block path's order (the streaming score kernels sum d in a different
// order; their P V is the same arithmetic and stays), and KV parts are fixed by position
// (every kSplitKeys positions) instead of by how many work items the step has; partials merge
// in part order, and a part a row cannot see is skipped, so one visible part is exactly the
// unsplit result.

namespace fastlm::cpu {

namespace {

constexpr int kTile = 64;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Query vectors (rows x GQA group) per prefill block: enough to amortize the K/V conversion.
constexpr int kBlockQueries = 192;
constexpr int kMaxBlockRows = 128;
// The streaming path handles up to this many query vectors per item.
constexpr int kMaxStreamQueries = 4;
// Batch-invariant mode: KV parts are the positions [p * kSplitKeys, (p + 1) * kSplitKeys).
constexpr int kSplitKeys = 4 * kTile;

// ---------------------------------------------------------------- block path kernels
// s[i * kTile + j] = dot(q[i], k[:, j]) for i < nq, j < nk; kt is K transposed, [d][kTile].
// Columns nk..kTile may be written with garbage (never read).
using BlockScoresFn = void (*)(const float* q, int nq, int d, const float* kt, int nk, float* s);
// acc[i] = acc[i] * alpha[i] + sum_j p[i * kTile + j] * v[j] for i < nq (v is [nk][d]).
using BlockPvFn = void (*)(const float* p, int nq, const float* v, int nk, int d,
                           const float* alpha, float* acc);

void block_scores_scalar(const float* q, int nq, int d, const float* kt, int nk, float* s) {
  for (int i = 0; i < nq; ++i) {
    float* si = s + i * kTile;
    std::fill(si, si + nk, 0.0f);
    for (int t = 0; t < d; ++t) {
      const float qt = q[i * d + t];
      const float* kr = kt + t * kTile;
      for (int j = 0; j < nk; ++j) si[j] += qt * kr[j];
    }
  }
}

void block_pv_scalar(const float* p, int nq, const float* v, int nk, int d, const float* alpha,
                     float* acc) {
  for (int i = 0; i < nq; ++i) {
    float* a = acc + i * d;
    for (int t = 0; t < d; ++t) a[t] *= alpha[i];
    for (int j = 0; j < nk; ++j) {
      const float pj = p[i * kTile + j];
      for (int t = 0; t < d; ++t) a[t] += pj * v[j * d + t];
    }
  }
}

#if defined(__x86_64__)

// AVX2: R query rows x 32 keys (4 ymm) per pass, 12 accumulators.
template <int R>
void block_scores_avx2_r(const float* q, int d, const float* kt, int c0, float* s) {
  __m256 acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < 4; ++c) acc[r][c] = _mm256_setzero_ps();
  for (int t = 0; t < d; ++t) {
    const float* kr = kt + t * kTile + c0;
    const __m256 k0 = _mm256_loadu_ps(kr), k1 = _mm256_loadu_ps(kr + 8);
    const __m256 k2 = _mm256_loadu_ps(kr + 16), k3 = _mm256_loadu_ps(kr + 24);
    for (int r = 0; r < R; ++r) {
      const __m256 qb = _mm256_broadcast_ss(q + r * d + t);
      acc[r][0] = _mm256_fmadd_ps(qb, k0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(qb, k1, acc[r][1]);
      acc[r][2] = _mm256_fmadd_ps(qb, k2, acc[r][2]);
      acc[r][3] = _mm256_fmadd_ps(qb, k3, acc[r][3]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < 4; ++c) _mm256_storeu_ps(s + r * kTile + c0 + 8 * c, acc[r][c]);
}

void block_scores_avx2(const float* q, int nq, int d, const float* kt, int nk, float* s) {
  for (int c0 = 0; c0 < nk; c0 += 32) {
    int i = 0;
    for (; i + 3 <= nq; i += 3) block_scores_avx2_r<3>(q + i * d, d, kt, c0, s + i * kTile);
    if (nq - i == 2) block_scores_avx2_r<2>(q + i * d, d, kt, c0, s + i * kTile);
    if (nq - i == 1) block_scores_avx2_r<1>(q + i * d, d, kt, c0, s + i * kTile);
  }
}

// AVX2: R rows x W ymm of d (W * 8 floats) per pass, all keys of the tile.
template <int R, int W>
void block_pv_avx2_rw(const float* p, const float* v, int nk, int d, const float* alpha, float* acc,
                      int c0) {
  __m256 r[R][W];
  for (int i = 0; i < R; ++i) {
    const __m256 al = _mm256_set1_ps(alpha[i]);
    for (int w = 0; w < W; ++w)
      r[i][w] = _mm256_mul_ps(_mm256_loadu_ps(acc + i * d + c0 + 8 * w), al);
  }
  for (int j = 0; j < nk; ++j) {
    __m256 vw[W];
    for (int w = 0; w < W; ++w) vw[w] = _mm256_loadu_ps(v + j * d + c0 + 8 * w);
    for (int i = 0; i < R; ++i) {
      const __m256 pb = _mm256_broadcast_ss(p + i * kTile + j);
      for (int w = 0; w < W; ++w) r[i][w] = _mm256_fmadd_ps(pb, vw[w], r[i][w]);
    }
  }
  for (int i = 0; i < R; ++i)
    for (int w = 0; w < W; ++w) _mm256_storeu_ps(acc + i * d + c0 + 8 * w, r[i][w]);
}

template <int R>
void block_pv_avx2_rows(const float* p, const float* v, int nk, int d, const float* alpha,
                        float* acc) {
  int c = 0;
  for (; c + 32 <= d; c += 32) block_pv_avx2_rw<R, 4>(p, v, nk, d, alpha, acc, c);
  switch ((d - c) / 8) {
    case 3:
      return block_pv_avx2_rw<R, 3>(p, v, nk, d, alpha, acc, c);
    case 2:
      return block_pv_avx2_rw<R, 2>(p, v, nk, d, alpha, acc, c);
    case 1:
      return block_pv_avx2_rw<R, 1>(p, v, nk, d, alpha, acc, c);
  }
}

void block_pv_avx2(const float* p, int nq, const float* v, int nk, int d, const float* alpha,
                   float* acc) {
  int i = 0;
  for (; i + 2 <= nq; i += 2)
    block_pv_avx2_rows<2>(p + i * kTile, v, nk, d, alpha + i, acc + i * d);
  if (i < nq) block_pv_avx2_rows<1>(p + i * kTile, v, nk, d, alpha + i, acc + i * d);
}

// AVX-512: R query rows x 64 keys (4 zmm), 16 accumulators; per d step 4 loads + R broadcasts
// feed 4R FMAs.
template <int R>
FASTLM_AVX512 void block_scores_avx512_r(const float* q, int d, const float* kt, float* s) {
  __m512 acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int t = 0; t < d; ++t) {
    const float* kr = kt + t * kTile;
    const __m512 k0 = _mm512_loadu_ps(kr), k1 = _mm512_loadu_ps(kr + 16);
    const __m512 k2 = _mm512_loadu_ps(kr + 32), k3 = _mm512_loadu_ps(kr + 48);
    for (int r = 0; r < R; ++r) {
      const __m512 qb = _mm512_set1_ps(q[r * d + t]);
      acc[r][0] = _mm512_fmadd_ps(qb, k0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(qb, k1, acc[r][1]);
      acc[r][2] = _mm512_fmadd_ps(qb, k2, acc[r][2]);
      acc[r][3] = _mm512_fmadd_ps(qb, k3, acc[r][3]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < 4; ++c) _mm512_storeu_ps(s + r * kTile + 16 * c, acc[r][c]);
}

// Narrow tiles (the last of a range): R rows x 16 keys.
template <int R>
FASTLM_AVX512 void block_scores_avx512_r16(const float* q, int d, const float* kt, int c0,
                                           float* s) {
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  for (int t = 0; t < d; ++t) {
    const __m512 k = _mm512_loadu_ps(kt + t * kTile + c0);
    for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(q[r * d + t]), k, acc[r]);
  }
  for (int r = 0; r < R; ++r) _mm512_storeu_ps(s + r * kTile + c0, acc[r]);
}

FASTLM_AVX512 void block_scores_avx512(const float* q, int nq, int d, const float* kt, int nk,
                                       float* s) {
  if (nk <= 32) {
    for (int c0 = 0; c0 < nk; c0 += 16) {
      int i = 0;
      for (; i + 8 <= nq; i += 8) block_scores_avx512_r16<8>(q + i * d, d, kt, c0, s + i * kTile);
      for (; i < nq; ++i) block_scores_avx512_r16<1>(q + i * d, d, kt, c0, s + i * kTile);
    }
    return;
  }
  int i = 0;
  for (; i + 4 <= nq; i += 4) block_scores_avx512_r<4>(q + i * d, d, kt, s + i * kTile);
  switch (nq - i) {
    case 3:
      return block_scores_avx512_r<3>(q + i * d, d, kt, s + i * kTile);
    case 2:
      return block_scores_avx512_r<2>(q + i * d, d, kt, s + i * kTile);
    case 1:
      return block_scores_avx512_r<1>(q + i * d, d, kt, s + i * kTile);
  }
}

// AVX-512: R rows x W zmm of d (W * 16 floats) per pass; per key W loads + R broadcasts feed
// R*W FMAs.
template <int R, int W>
FASTLM_AVX512 void block_pv_avx512_rw(const float* p, const float* v, int nk, int d,
                                      const float* alpha, float* acc, int c0) {
  __m512 r[R][W];
  for (int i = 0; i < R; ++i) {
    const __m512 al = _mm512_set1_ps(alpha[i]);
    for (int w = 0; w < W; ++w)
      r[i][w] = _mm512_mul_ps(_mm512_loadu_ps(acc + i * d + c0 + 16 * w), al);
  }
  for (int j = 0; j < nk; ++j) {
    __m512 vw[W];
    for (int w = 0; w < W; ++w) vw[w] = _mm512_loadu_ps(v + j * d + c0 + 16 * w);
    for (int i = 0; i < R; ++i) {
      const __m512 pb = _mm512_set1_ps(p[i * kTile + j]);
      for (int w = 0; w < W; ++w) r[i][w] = _mm512_fmadd_ps(pb, vw[w], r[i][w]);
    }
  }
  for (int i = 0; i < R; ++i)
    for (int w = 0; w < W; ++w) _mm512_storeu_ps(acc + i * d + c0 + 16 * w, r[i][w]);
}

template <int R>
FASTLM_AVX512 void block_pv_avx512_rows(const float* p, const float* v, int nk, int d,
                                        const float* alpha, float* acc) {
  int c = 0;
  for (; c + 64 <= d; c += 64) block_pv_avx512_rw<R, 4>(p, v, nk, d, alpha, acc, c);
  switch ((d - c) / 16) {
    case 3:
      return block_pv_avx512_rw<R, 3>(p, v, nk, d, alpha, acc, c);
    case 2:
      return block_pv_avx512_rw<R, 2>(p, v, nk, d, alpha, acc, c);
    case 1:
      return block_pv_avx512_rw<R, 1>(p, v, nk, d, alpha, acc, c);
  }
}

FASTLM_AVX512 void block_pv_avx512(const float* p, int nq, const float* v, int nk, int d,
                                   const float* alpha, float* acc) {
  int i = 0;
  for (; i + 4 <= nq; i += 4)
    block_pv_avx512_rows<4>(p + i * kTile, v, nk, d, alpha + i, acc + i * d);
  switch (nq - i) {
    case 3:
      return block_pv_avx512_rows<3>(p + i * kTile, v, nk, d, alpha + i, acc + i * d);
    case 2:
      return block_pv_avx512_rows<2>(p + i * kTile, v, nk, d, alpha + i, acc + i * d);
    case 1:
      return block_pv_avx512_rows<1>(p + i * kTile, v, nk, d, alpha + i, acc + i * d);
  }
}

// ---------------------------------------------------------------- streaming path kernels
// T is the cache element: float, or uint16_t holding bf16 bits (widened in registers).

// s[i * kTile + j] = dot(q[i], k_j) for i < NQ, j < nk, reading each K row once.
template <typename T, int NQ>
FASTLM_AVX512 void stream_scores_avx512(const float* q, const T* const* rows, int nk, int d,
                                        float* s) {
  int j = 0;
  for (; j + 4 <= nk; j += 4) {
    __m512 acc[NQ][4];
    for (int i = 0; i < NQ; ++i)
      for (int u = 0; u < 4; ++u) acc[i][u] = _mm512_setzero_ps();
    for (int c = 0; c < d; c += 16) {
      __m512 k[4];
      for (int u = 0; u < 4; ++u) k[u] = simd::load16(rows[j + u] + c);
      for (int i = 0; i < NQ; ++i) {
        const __m512 qv = _mm512_loadu_ps(q + i * d + c);
        for (int u = 0; u < 4; ++u) acc[i][u] = _mm512_fmadd_ps(qv, k[u], acc[i][u]);
      }
    }
    for (int i = 0; i < NQ; ++i)
      _mm_storeu_ps(s + i * kTile + j,
                    simd::hsum8x4(simd::fold16(acc[i][0]), simd::fold16(acc[i][1]),
                                  simd::fold16(acc[i][2]), simd::fold16(acc[i][3])));
  }
  for (; j < nk; ++j) {
    __m512 acc[NQ];
    for (int i = 0; i < NQ; ++i) acc[i] = _mm512_setzero_ps();
    for (int c = 0; c < d; c += 16) {
      const __m512 k = simd::load16(rows[j] + c);
      for (int i = 0; i < NQ; ++i)
        acc[i] = _mm512_fmadd_ps(_mm512_loadu_ps(q + i * d + c), k, acc[i]);
    }
    for (int i = 0; i < NQ; ++i) s[i * kTile + j] = _mm512_reduce_add_ps(acc[i]);
  }
}

template <typename T, int NQ, int W>
FASTLM_AVX512 void stream_pv_avx512_w(const float* p, const T* const* rows, int nk, int d,
                                      const float* alpha, float* acc, int c0) {
  __m512 r[NQ][W];
  for (int i = 0; i < NQ; ++i) {
    const __m512 al = _mm512_set1_ps(alpha[i]);
    for (int w = 0; w < W; ++w)
      r[i][w] = _mm512_mul_ps(_mm512_loadu_ps(acc + i * d + c0 + 16 * w), al);
  }
  for (int j = 0; j < nk; ++j) {
    __m512 vw[W];
    for (int w = 0; w < W; ++w) vw[w] = simd::load16(rows[j] + c0 + 16 * w);
    for (int i = 0; i < NQ; ++i) {
      const __m512 pb = _mm512_set1_ps(p[i * kTile + j]);
      for (int w = 0; w < W; ++w) r[i][w] = _mm512_fmadd_ps(pb, vw[w], r[i][w]);
    }
  }
  for (int i = 0; i < NQ; ++i)
    for (int w = 0; w < W; ++w) _mm512_storeu_ps(acc + i * d + c0 + 16 * w, r[i][w]);
}

// acc[i] = acc[i] * alpha[i] + sum_j p[i * kTile + j] * v_j, reading each V row once per 64
// columns of d.
template <typename T, int NQ>
FASTLM_AVX512 void stream_pv_avx512(const float* p, const T* const* rows, int nk, int d,
                                    const float* alpha, float* acc) {
  int c = 0;
  for (; c + 64 <= d; c += 64) stream_pv_avx512_w<T, NQ, 4>(p, rows, nk, d, alpha, acc, c);
  for (; c < d; c += 16) stream_pv_avx512_w<T, NQ, 1>(p, rows, nk, d, alpha, acc, c);
}

// AVX2: two keys per pass keeps NQ x 2 accumulators within the 16 ymm registers.
template <typename T, int NQ>
void stream_scores_avx2(const float* q, const T* const* rows, int nk, int d, float* s) {
  int j = 0;
  for (; j + 2 <= nk; j += 2) {
    __m256 acc[NQ][2];
    for (int i = 0; i < NQ; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (int c = 0; c < d; c += 8) {
      const __m256 k0 = simd::load8(rows[j] + c), k1 = simd::load8(rows[j + 1] + c);
      for (int i = 0; i < NQ; ++i) {
        const __m256 qv = _mm256_loadu_ps(q + i * d + c);
        acc[i][0] = _mm256_fmadd_ps(qv, k0, acc[i][0]);
        acc[i][1] = _mm256_fmadd_ps(qv, k1, acc[i][1]);
      }
    }
    for (int i = 0; i < NQ; ++i) {
      s[i * kTile + j] = simd::hsum8(acc[i][0]);
      s[i * kTile + j + 1] = simd::hsum8(acc[i][1]);
    }
  }
  for (; j < nk; ++j) {
    for (int i = 0; i < NQ; ++i) {
      __m256 a = _mm256_setzero_ps();
      for (int c = 0; c < d; c += 8)
        a = _mm256_fmadd_ps(_mm256_loadu_ps(q + i * d + c), simd::load8(rows[j] + c), a);
      s[i * kTile + j] = simd::hsum8(a);
    }
  }
}

template <typename T, int NQ, int W>
void stream_pv_avx2_w(const float* p, const T* const* rows, int nk, int d, const float* alpha,
                      float* acc, int c0) {
  __m256 r[NQ][W];
  for (int i = 0; i < NQ; ++i) {
    const __m256 al = _mm256_set1_ps(alpha[i]);
    for (int w = 0; w < W; ++w)
      r[i][w] = _mm256_mul_ps(_mm256_loadu_ps(acc + i * d + c0 + 8 * w), al);
  }
  for (int j = 0; j < nk; ++j) {
    __m256 vw[W];
    for (int w = 0; w < W; ++w) vw[w] = simd::load8(rows[j] + c0 + 8 * w);
    for (int i = 0; i < NQ; ++i) {
      const __m256 pb = _mm256_broadcast_ss(p + i * kTile + j);
      for (int w = 0; w < W; ++w) r[i][w] = _mm256_fmadd_ps(pb, vw[w], r[i][w]);
    }
  }
  for (int i = 0; i < NQ; ++i)
    for (int w = 0; w < W; ++w) _mm256_storeu_ps(acc + i * d + c0 + 8 * w, r[i][w]);
}

template <typename T, int NQ>
void stream_pv_avx2(const float* p, const T* const* rows, int nk, int d, const float* alpha,
                    float* acc) {
  int c = 0;
  for (; c + 16 <= d; c += 16) stream_pv_avx2_w<T, NQ, 2>(p, rows, nk, d, alpha, acc, c);
  if (c < d) stream_pv_avx2_w<T, NQ, 1>(p, rows, nk, d, alpha, acc, c);
}

#endif  // __x86_64__

// ---------------------------------------------------------------- online softmax
// One query row of a tile: scores s[0, nk) become probabilities; keys outside [lo, hi) are
// masked to exactly 0. Updates the running max m and sum l; returns the factor acc must be
// rescaled by.
using SoftmaxFn = float (*)(float* s, int nk, int lo, int hi, float* m, float* l);

float softmax_row_scalar(float* s, int nk, int lo, int hi, float* m, float* l) {
  if (lo >= hi) {
    std::fill(s, s + nk, 0.0f);
    return 1.0f;
  }
  float tile_max = kNegInf;
  for (int j = lo; j < hi; ++j) tile_max = std::max(tile_max, s[j]);
  const float m_new = std::max(*m, tile_max);
  const float alpha = *m == kNegInf ? 0.0f : fast_exp(*m - m_new);
  std::fill(s, s + lo, 0.0f);
  std::fill(s + hi, s + nk, 0.0f);
  float sum = 0.0f;
  for (int j = lo; j < hi; ++j) {
    s[j] = fast_exp(s[j] - m_new);
    sum += s[j];
  }
  *l = *l * alpha + sum;
  *m = m_new;
  return alpha;
}

#if defined(__x86_64__)

float softmax_row_avx2(float* s, int nk, int lo, int hi, float* m, float* l) {
  if (lo >= hi) {
    std::fill(s, s + nk, 0.0f);
    return 1.0f;
  }
  __m256 mx = _mm256_set1_ps(kNegInf);
  int j = lo;
  for (; j + 8 <= hi; j += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(s + j));
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  float tile_max = _mm_cvtss_f32(m4);
  for (; j < hi; ++j) tile_max = std::max(tile_max, s[j]);
  const float m_new = std::max(*m, tile_max);
  const float alpha = *m == kNegInf ? 0.0f : fast_exp(*m - m_new);
  std::fill(s, s + lo, 0.0f);
  std::fill(s + hi, s + nk, 0.0f);
  const __m256 mv = _mm256_set1_ps(m_new);
  __m256 sv = _mm256_setzero_ps();
  for (j = lo; j + 8 <= hi; j += 8) {
    const __m256 e = simd::exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), mv));
    _mm256_storeu_ps(s + j, e);
    sv = _mm256_add_ps(sv, e);
  }
  float sum = simd::hsum8(sv);
  for (; j < hi; ++j) {
    s[j] = fast_exp(s[j] - m_new);
    sum += s[j];
  }
  *l = *l * alpha + sum;
  *m = m_new;
  return alpha;
}

FASTLM_AVX512 FASTLM_INLINE __mmask16 lane_mask(int from, int to) {
  // Lanes [from, to) of a 16-lane chunk, with from/to clamped to [0, 16].
  const int a = std::clamp(from, 0, 16), b = std::clamp(to, 0, 16);
  return static_cast<__mmask16>(((1u << b) - 1u) & ~((1u << a) - 1u));
}

FASTLM_AVX512 float softmax_row_avx512(float* s, int nk, int lo, int hi, float* m, float* l) {
  if (lo >= hi) {
    std::fill(s, s + nk, 0.0f);
    return 1.0f;
  }
  __m512 mx = _mm512_set1_ps(kNegInf);
  for (int c = lo & ~15; c < hi; c += 16)
    mx = _mm512_mask_max_ps(mx, lane_mask(lo - c, hi - c), mx, _mm512_loadu_ps(s + c));
  const float m_new = std::max(*m, _mm512_reduce_max_ps(mx));
  const float alpha = *m == kNegInf ? 0.0f : fast_exp(*m - m_new);
  const __m512 mv = _mm512_set1_ps(m_new);
  __m512 sv = _mm512_setzero_ps();
  for (int c = 0; c < nk; c += 16) {
    const __mmask16 valid = lane_mask(lo - c, hi - c);
    const __mmask16 store = lane_mask(0, nk - c);
    // Masked-off lanes become exactly 0 (maskz), so they add nothing to the sum or to P V.
    const __m512 e =
        _mm512_maskz_mov_ps(valid, simd::exp16(_mm512_sub_ps(_mm512_loadu_ps(s + c), mv)));
    _mm512_mask_storeu_ps(s + c, store, e);
    sv = _mm512_add_ps(sv, e);
  }
  *l = *l * alpha + _mm512_reduce_add_ps(sv);
  *m = m_new;
  return alpha;
}

#endif  // __x86_64__

// ---------------------------------------------------------------- dispatch

template <typename T>
using StreamScoresFn = void (*)(const float* q, const T* const* rows, int nk, int d, float* s);
template <typename T>
using StreamPvFn = void (*)(const float* p, const T* const* rows, int nk, int d, const float* alpha,
                            float* acc);

template <typename T>
struct Kernels {
  BlockScoresFn scores = block_scores_scalar;
  BlockPvFn pv = block_pv_scalar;
  SoftmaxFn softmax = softmax_row_scalar;
  // Indexed by the number of query vectors - 1; null: use the block path.
  StreamScoresFn<T> stream_scores[kMaxStreamQueries] = {};
  StreamPvFn<T> stream_pv[kMaxStreamQueries] = {};
};

#if defined(__x86_64__)
template <typename T, int... N>
void fill_stream_avx512(Kernels<T>& k, std::integer_sequence<int, N...>) {
  ((k.stream_scores[N] = stream_scores_avx512<T, N + 1>), ...);
  ((k.stream_pv[N] = stream_pv_avx512<T, N + 1>), ...);
}
template <typename T, int... N>
void fill_stream_avx2(Kernels<T>& k, std::integer_sequence<int, N...>) {
  ((k.stream_scores[N] = stream_scores_avx2<T, N + 1>), ...);
  ((k.stream_pv[N] = stream_pv_avx2<T, N + 1>), ...);
}
#endif

template <typename T>
Kernels<T> pick_kernels([[maybe_unused]] int d) {
  Kernels<T> k;
  switch (active_isa()) {
    case Isa::kAvx512Bf16:
    case Isa::kAvx512:
#if defined(__x86_64__)
      if (d % 16 == 0) {
        k.scores = block_scores_avx512;
        k.pv = block_pv_avx512;
        k.softmax = softmax_row_avx512;
        fill_stream_avx512(k, std::make_integer_sequence<int, kMaxStreamQueries>{});
        return k;
      }
#endif
      [[fallthrough]];
    case Isa::kAvx2:
#if defined(__x86_64__)
      if (d % 8 == 0) {
        k.scores = block_scores_avx2;
        k.pv = block_pv_avx2;
        k.softmax = softmax_row_avx2;
        fill_stream_avx2(k, std::make_integer_sequence<int, kMaxStreamQueries>{});
        return k;
      }
#endif
      [[fallthrough]];
    case Isa::kScalar:
      return k;
  }
  return k;
}

// ---------------------------------------------------------------- work items

// Queries of one (sequence, KV heads, row block); their KV positions [kv_begin, kv_end) are
// covered by `parts` items, whose partials live at scratch + part * stride when parts > 1.
// A decode step groups all KV heads of a sequence, so its tiles walk whole cache rows (all heads
// contiguous) that the hardware prefetcher can follow; prefill blocks hold one head each.
// Query index i of a group: head hh = i / (rows * G), row r = i % (rows * G) / G, member i % G.
struct Group {
  int seq;
  int kv_head;             // first KV head
  int num_heads;           // KV heads [kv_head, kv_head + num_heads)
  int row_begin, row_end;  // rows of the sequence's queries (0 = its first new token)
  int kv_begin, kv_end;
  int parts;
  int64_t scratch;  // offset of part 0's partials, or -1
};

struct Item {
  int group;
  int part;
  int kv_begin, kv_end;
};

template <DType C>
using CacheElem = std::conditional_t<C == DType::kF32, float, uint16_t>;

// kt[t * kTile + j] = k_j[t]: the tile's K transposed to f32, so the score kernel broadcasts
// one query element against 16 keys. Runs once per tile per block of ~192 queries.
template <typename T>
void transpose_k(const T* const* rows, int nk, int d, float* kt) {
  for (int j = 0; j < nk; ++j) {
    const T* src = rows[j];
    for (int t = 0; t < d; ++t) {
      if constexpr (std::is_same_v<T, float>) {
        kt[t * kTile + j] = src[t];
      } else {
        kt[t * kTile + j] = bf16_to_f32(src[t]);
      }
    }
  }
}

template <typename T>
void copy_v(const T* const* rows, int nk, int d, float* vt) {
  for (int j = 0; j < nk; ++j) {
    if constexpr (std::is_same_v<T, float>) {
      std::memcpy(vt + j * d, rows[j], d * sizeof(float));
    } else {
      for (int t = 0; t < d; ++t) vt[j * d + t] = bf16_to_f32(rows[j][t]);
    }
  }
}

// Offset of query i of group g in q / out.
int64_t query_offset(const PagedAttentionArgs& a, const Group& g, int i) {
  const int group_size = a.num_q_heads / a.num_kv_heads;
  const int per_head = (g.row_end - g.row_begin) * group_size;
  const int hh = i / per_head, r = i % per_head / group_size, h = i % group_size;
  const int64_t row = a.query_start_loc[g.seq] + g.row_begin + r;
  return row * a.num_q_heads * a.head_dim +
         static_cast<int64_t>((g.kv_head + hh) * group_size + h) * a.head_dim;
}

template <DType C>
void run_item(const PagedAttentionArgs& a, const Group& g, const Item& it,
              const Kernels<CacheElem<C>>& kern, float* scratch) {
  using T = CacheElem<C>;
  const int d = a.head_dim;
  const int group_size = a.num_q_heads / a.num_kv_heads;
  const int q_begin = a.query_start_loc[g.seq];
  const int q_len = a.query_start_loc[g.seq + 1] - q_begin;
  const int ctx = a.seq_lens[g.seq];
  const int rows = g.row_end - g.row_begin;
  const int per_head = rows * group_size;
  const int nq = per_head * g.num_heads;
  const int32_t* table = a.block_tables + static_cast<int64_t>(g.seq) * a.max_blocks_per_seq;
  const int64_t row_stride = static_cast<int64_t>(a.num_kv_heads) * d;
  const bool streaming =
      per_head <= kMaxStreamQueries && kern.stream_scores[per_head - 1] != nullptr;
  const bool stream_scores = streaming && !batch_invariant();

  thread_local std::vector<float> buf;
  const size_t need = static_cast<size_t>(nq) * (2 * d + kTile + 4) +
                      (stream_scores ? 0 : static_cast<size_t>(kTile) * d) +
                      (streaming ? 0 : static_cast<size_t>(kTile) * d);
  if (buf.size() < need) buf.resize(need);
  float* qs = buf.data();                            // [nq, d] scaled queries
  float* acc = qs + nq * d;                          // [nq, d]
  float* s = acc + nq * d;                           // [nq, kTile] scores, then probabilities
  float* m = s + nq * kTile;                         // [nq] running max
  float* l = m + nq;                                 // [nq] running sum
  float* alpha = l + nq;                             // [nq] rescale factor of this tile
  int* pos = reinterpret_cast<int*>(alpha + nq);     // [nq] absolute position of the query
  float* kt = reinterpret_cast<float*>(pos + nq);    // [d, kTile] (block scores)
  float* vt = kt + (stream_scores ? 0 : kTile * d);  // [kTile, d] (block path)
  static_assert(sizeof(int) == sizeof(float));
  int64_t row_off[kTile];
  const T* krows[kTile];
  const T* vrows[kTile];
  const T* kc = static_cast<const T*>(a.k_cache);
  const T* vc = static_cast<const T*>(a.v_cache);

  for (int i = 0; i < nq; ++i) {
    const float* src = a.q + query_offset(a, g, i);
    for (int t = 0; t < d; ++t) qs[i * d + t] = src[t] * a.scale;
    pos[i] = ctx - q_len + g.row_begin + i % per_head / group_size;
    m[i] = kNegInf;
    l[i] = 0.0f;
  }
  std::fill(acc, acc + nq * d, 0.0f);

  const int window = a.sliding_window;
  for (int j0 = it.kv_begin; j0 < it.kv_end; j0 += kTile) {
    const int nk = std::min(kTile, it.kv_end - j0);
    auto offset = [&](int p) {
      return (static_cast<int64_t>(table[p / a.block_size]) * a.block_size + p % a.block_size) *
             row_stride;
    };
    for (int j = 0; j < nk; ++j) row_off[j] = offset(j0 + j);
    if (streaming) {
      // Decode is bound by memory latency: blocks are scattered, so the hardware prefetcher
      // cannot run ahead across them. Request the next tile's rows while this one computes.
      const int next_end = std::min(it.kv_end, j0 + 2 * kTile);
      const int row_bytes = g.num_heads * d * static_cast<int>(sizeof(T));
      for (int p = j0 + kTile; p < next_end; ++p) {
        const int64_t off = offset(p) + static_cast<int64_t>(g.kv_head) * d;
        for (int b = 0; b < row_bytes; b += 64) {
          __builtin_prefetch(reinterpret_cast<const char*>(kc + off) + b);
          __builtin_prefetch(reinterpret_cast<const char*>(vc + off) + b);
        }
      }
    }
    for (int hh = 0; hh < g.num_heads; ++hh) {
      // A head's queries are ordered by position, so the ones that see any key of this tile
      // form a range [i0, i1): later rows than the tile's first key, and (with a window) rows
      // whose window still reaches the tile's last key.
      int i0 = hh * per_head, i1 = i0 + per_head;
      while (i0 < i1 && pos[i0] < j0) ++i0;
      if (window > 0)
        while (i1 > i0 && pos[i1 - 1] - window + 1 > j0 + nk - 1) --i1;
      const int n = i1 - i0;
      if (n <= 0) continue;
      const int64_t head_off = static_cast<int64_t>(g.kv_head + hh) * d;
      for (int j = 0; j < nk; ++j) {
        krows[j] = kc + row_off[j] + head_off;
        vrows[j] = vc + row_off[j] + head_off;
      }
      if (stream_scores) {
        kern.stream_scores[n - 1](qs + i0 * d, krows, nk, d, s + i0 * kTile);
      } else {
        transpose_k(krows, nk, d, kt);
        kern.scores(qs + i0 * d, n, d, kt, nk, s + i0 * kTile);
      }
      if (!streaming) copy_v(vrows, nk, d, vt);
      for (int i = i0; i < i1; ++i) {
        // Keys a query may see: (pos - window, pos], or [0, pos] without a window.
        const int hi = std::min(nk, pos[i] - j0 + 1);
        const int lo = window > 0 ? std::max(0, pos[i] - window + 1 - j0) : 0;
        alpha[i] = kern.softmax(s + i * kTile, nk, lo, hi, m + i, l + i);
      }
      if (streaming) {
        kern.stream_pv[n - 1](s + i0 * kTile, vrows, nk, d, alpha + i0, acc + i0 * d);
      } else {
        kern.pv(s + i0 * kTile, n, vt, nk, d, alpha + i0, acc + i0 * d);
      }
    }
  }

  if (g.parts == 1) {
    for (int i = 0; i < nq; ++i) {
      float* dst = a.out + query_offset(a, g, i);
      const float inv = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;
      for (int t = 0; t < d; ++t) dst[t] = acc[i * d + t] * inv;
    }
    return;
  }
  // Partial: per query [m, l, acc[d]].
  float* part = scratch + g.scratch + static_cast<int64_t>(it.part) * nq * (d + 2);
  for (int i = 0; i < nq; ++i) {
    float* p = part + static_cast<int64_t>(i) * (d + 2);
    p[0] = m[i];
    p[1] = l[i];
    std::memcpy(p + 2, acc + i * d, d * sizeof(float));
  }
}

void merge_group(const PagedAttentionArgs& a, const Group& g, const float* scratch) {
  const int d = a.head_dim;
  const int group_size = a.num_q_heads / a.num_kv_heads;
  const int nq = (g.row_end - g.row_begin) * group_size * g.num_heads;
  const int64_t part_stride = static_cast<int64_t>(nq) * (d + 2);
  for (int i = 0; i < nq; ++i) {
    float* dst = a.out + query_offset(a, g, i);
    float m_all = kNegInf;
    for (int p = 0; p < g.parts; ++p)
      m_all = std::max(m_all, scratch[g.scratch + p * part_stride + i * (d + 2)]);
    float l_all = 0.0f;
    std::fill(dst, dst + d, 0.0f);
    for (int p = 0; p < g.parts; ++p) {
      const float* part = scratch + g.scratch + p * part_stride + i * (d + 2);
      if (part[0] == kNegInf) continue;  // this part saw no visible key
      const float w = std::exp(part[0] - m_all);
      l_all += w * part[1];
      for (int t = 0; t < d; ++t) dst[t] += w * part[2 + t];
    }
    const float inv = l_all > 0.0f ? 1.0f / l_all : 0.0f;
    for (int t = 0; t < d; ++t) dst[t] *= inv;
  }
}

}  // namespace

template <DType C>
void paged_attention(const PagedAttentionArgs& a) {
  const int group_size = a.num_q_heads / a.num_kv_heads;
  const int threads = omp_get_max_threads();
  const Kernels<CacheElem<C>> kern = pick_kernels<CacheElem<C>>(a.head_dim);
  // Decode steps of sequences whose GQA group fits the streaming kernels: one group per
  // sequence covering every KV head.
  const bool stream_all_heads =
      group_size <= kMaxStreamQueries && kern.stream_scores[group_size - 1] != nullptr;
  const int64_t want = 4 * static_cast<int64_t>(threads);

  // Rows per block: ~kBlockQueries query vectors, so each K/V tile is converted once for many
  // queries; halved (down to 16 rows) while prefill blocks alone would leave threads idle.
  int block_rows = std::clamp(kBlockQueries / group_size, 1, kMaxBlockRows);
  auto count_groups = [&](int rows_per_block) {
    int64_t n = 0;
    for (int s = 0; s < a.num_seqs; ++s) {
      const int q_len = a.query_start_loc[s + 1] - a.query_start_loc[s];
      n += q_len == 1 && stream_all_heads
               ? 1
               : int64_t{a.num_kv_heads} * ((q_len + rows_per_block - 1) / rows_per_block);
    }
    return n;
  };
  while (block_rows > 16 && count_groups(block_rows) < want) block_rows /= 2;

  std::vector<Group> groups;
  for (int s = 0; s < a.num_seqs; ++s) {
    const int q_len = a.query_start_loc[s + 1] - a.query_start_loc[s];
    const int ctx = a.seq_lens[s];
    for (int r0 = 0; r0 < q_len; r0 += block_rows) {
      const int r1 = std::min(q_len, r0 + block_rows);
      const int first_pos = ctx - q_len + r0;
      const int last_pos = ctx - q_len + r1 - 1;
      // Rounded down to a tile, so tiles sit at the same positions whatever the block holds.
      const int kv_begin =
          a.sliding_window > 0 ? std::max(0, first_pos - a.sliding_window + 1) / kTile * kTile : 0;
      if (q_len == 1 && stream_all_heads) {
        groups.push_back({s, 0, a.num_kv_heads, r0, r1, kv_begin, last_pos + 1, 1, -1});
      } else {
        for (int h = 0; h < a.num_kv_heads; ++h)
          groups.push_back({s, h, 1, r0, r1, kv_begin, last_pos + 1, 1, -1});
      }
    }
  }
  if (groups.empty()) return;

  // Split long KV ranges when the groups alone cannot keep every thread busy; in
  // batch-invariant mode always, at fixed positions.
  const bool invariant = batch_invariant();
  const int64_t num_groups = static_cast<int64_t>(groups.size());
  int64_t scratch_size = 0;
  if (invariant) {
    for (Group& g : groups) {
      g.parts = (g.kv_end - 1) / kSplitKeys - g.kv_begin / kSplitKeys + 1;
      if (g.parts > 1) {
        g.scratch = scratch_size;
        const int nq = (g.row_end - g.row_begin) * group_size * g.num_heads;
        scratch_size += static_cast<int64_t>(g.parts) * nq * (a.head_dim + 2);
      }
    }
  } else if (threads > 1 && num_groups < want) {
    const int64_t per_group = (want + num_groups - 1) / num_groups;
    constexpr int kMinPartKeys = 4 * kTile;
    for (Group& g : groups) {
      const int keys = g.kv_end - g.kv_begin;
      // Short ranges stay whole (upper bound >= 1 keeps clamp well-defined).
      const int64_t max_parts = std::max<int64_t>(1, keys / kMinPartKeys);
      g.parts = static_cast<int>(std::clamp<int64_t>(per_group, 1, max_parts));
      if (g.parts > 1) {
        g.scratch = scratch_size;
        const int nq = (g.row_end - g.row_begin) * group_size * g.num_heads;
        scratch_size += static_cast<int64_t>(g.parts) * nq * (a.head_dim + 2);
      }
    }
  }
  std::vector<Item> items;
  std::vector<int64_t> cost;
  for (int gi = 0; gi < static_cast<int>(groups.size()); ++gi) {
    const Group& g = groups[gi];
    const int keys = g.kv_end - g.kv_begin;
    // Part boundaries on tile multiples, so only the last tile of a part is partial.
    const int per_part = (keys + g.parts - 1) / g.parts;
    const int step = (per_part + kTile - 1) / kTile * kTile;
    for (int p = 0; p < g.parts; ++p) {
      int b = std::min(g.kv_begin + p * step, g.kv_end);
      int e = std::min(g.kv_end, b + step);
      if (invariant) {
        const int first = g.kv_begin / kSplitKeys + p;
        b = std::max(g.kv_begin, first * kSplitKeys);
        e = std::min(g.kv_end, (first + 1) * kSplitKeys);
      }
      items.push_back({gi, p, b, e});
      cost.push_back(static_cast<int64_t>(e - b) * (g.row_end - g.row_begin) * g.num_heads);
    }
  }
  // Largest first, so the dynamic schedule does not end on one long causal block.
  std::vector<int> order(items.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return cost[x] > cost[y]; });

  std::vector<float> scratch(static_cast<size_t>(scratch_size));
  const int64_t num_items = static_cast<int64_t>(items.size());
#pragma omp parallel for schedule(dynamic, 1) if (num_items > 1)
  for (int64_t i = 0; i < num_items; ++i) {
    const Item& it = items[order[i]];
    run_item<C>(a, groups[it.group], it, kern, scratch.data());
  }
  if (scratch_size > 0) {
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t gi = 0; gi < num_groups; ++gi)
      if (groups[gi].parts > 1) merge_group(a, groups[gi], scratch.data());
  }
}

template void paged_attention<DType::kF32>(const PagedAttentionArgs&);
template void paged_attention<DType::kBF16>(const PagedAttentionArgs&);

}  // namespace fastlm::cpu
