#include "cpu/paged_attention_tiles.h"

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

namespace fastlm::cpu::attn {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// (simd.h's FASTLM_INLINE exists on x86 only.)
#define FASTLM_ROW_INLINE inline __attribute__((always_inline))

// ---------------------------------------------------------------- tile conversion
// Exact copies (bf16 -> f32 is exact), so every ISA's conversion gives the same bits.

template <typename T>
float widen(T x) {
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else {
    return bf16_to_f32(x);
  }
}

template <typename T>
void transpose_k_scalar(const T* const* rows, int nk, int d, float* kt) {
  for (int j = 0; j < nk; ++j)
    for (int t = 0; t < d; ++t) kt[t * kTile + j] = widen(rows[j][t]);
}

template <typename T>
void copy_v_scalar(const T* const* rows, int nk, int d, float* v) {
  for (int j = 0; j < nk; ++j)
    for (int t = 0; t < d; ++t) v[j * d + t] = widen(rows[j][t]);
}

// ---------------------------------------------------------------- block path kernels

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

// AVX2: R query rows x 16 keys (2 ymm) per pass; R = 6 holds 12 accumulators + 2 keys + one
// broadcast in the 16 ymm registers, so per d step 8 loads feed 12 FMAs. Every (row, key) is
// one fma chain over d from 0, whatever the blocking.
template <int R>
void block_scores_avx2_r(const float* q, int d, const float* kt, int c0, float* s) {
  __m256 acc[R][2];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  for (int t = 0; t < d; ++t) {
    const float* kr = kt + t * kTile + c0;
    const __m256 k0 = _mm256_loadu_ps(kr), k1 = _mm256_loadu_ps(kr + 8);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m256 qb = _mm256_broadcast_ss(q + r * d + t);
      acc[r][0] = _mm256_fmadd_ps(qb, k0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(qb, k1, acc[r][1]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    _mm256_storeu_ps(s + r * kTile + c0, acc[r][0]);
    _mm256_storeu_ps(s + r * kTile + c0 + 8, acc[r][1]);
  }
}

void block_scores_avx2(const float* q, int nq, int d, const float* kt, int nk, float* s) {
  for (int c0 = 0; c0 < nk; c0 += 16) {
    int i = 0;
    for (; i + 6 <= nq; i += 6) block_scores_avx2_r<6>(q + i * d, d, kt, c0, s + i * kTile);
    const float* qi = q + i * d;
    float* si = s + i * kTile;
    switch (nq - i) {
      case 5:
        block_scores_avx2_r<5>(qi, d, kt, c0, si);
        break;
      case 4:
        block_scores_avx2_r<4>(qi, d, kt, c0, si);
        break;
      case 3:
        block_scores_avx2_r<3>(qi, d, kt, c0, si);
        break;
      case 2:
        block_scores_avx2_r<2>(qi, d, kt, c0, si);
        break;
      case 1:
        block_scores_avx2_r<1>(qi, d, kt, c0, si);
        break;
    }
  }
}

// AVX2: R rows x W ymm of d (W * 8 floats) per pass, all keys of the tile; R = 6, W = 2: per
// key 2 V loads + 6 broadcasts feed 12 FMAs, and the V tile is read once per 6 rows.
template <int R, int W>
void block_pv_avx2_rw(const float* p, const float* v, int nk, int d, const float* alpha, float* acc,
                      int c0) {
  __m256 r[R][W];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i) {
    const __m256 al = _mm256_set1_ps(alpha[i]);
#pragma GCC unroll 16
    for (int w = 0; w < W; ++w)
      r[i][w] = _mm256_mul_ps(_mm256_loadu_ps(acc + i * d + c0 + 8 * w), al);
  }
  for (int j = 0; j < nk; ++j) {
    __m256 vw[W];
#pragma GCC unroll 16
    for (int w = 0; w < W; ++w) vw[w] = _mm256_loadu_ps(v + j * d + c0 + 8 * w);
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const __m256 pb = _mm256_broadcast_ss(p + i * kTile + j);
#pragma GCC unroll 16
      for (int w = 0; w < W; ++w) r[i][w] = _mm256_fmadd_ps(pb, vw[w], r[i][w]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 16
    for (int w = 0; w < W; ++w) _mm256_storeu_ps(acc + i * d + c0 + 8 * w, r[i][w]);
}

template <int R>
void block_pv_avx2_rows(const float* p, const float* v, int nk, int d, const float* alpha,
                        float* acc) {
  int c = 0;
  for (; c + 16 <= d; c += 16) block_pv_avx2_rw<R, 2>(p, v, nk, d, alpha, acc, c);
  if (c < d) block_pv_avx2_rw<R, 1>(p, v, nk, d, alpha, acc, c);
}

void block_pv_avx2(const float* p, int nq, const float* v, int nk, int d, const float* alpha,
                   float* acc) {
  int i = 0;
  for (; i + 6 <= nq; i += 6)
    block_pv_avx2_rows<6>(p + i * kTile, v, nk, d, alpha + i, acc + i * d);
  const float* pi = p + i * kTile;
  switch (nq - i) {
    case 5:
      return block_pv_avx2_rows<5>(pi, v, nk, d, alpha + i, acc + i * d);
    case 4:
      return block_pv_avx2_rows<4>(pi, v, nk, d, alpha + i, acc + i * d);
    case 3:
      return block_pv_avx2_rows<3>(pi, v, nk, d, alpha + i, acc + i * d);
    case 2:
      return block_pv_avx2_rows<2>(pi, v, nk, d, alpha + i, acc + i * d);
    case 1:
      return block_pv_avx2_rows<1>(pi, v, nk, d, alpha + i, acc + i * d);
  }
}

// AVX-512: R query rows x 64 keys (4 zmm), 16 accumulators; per d step 4 loads + R broadcasts
// feed 4R FMAs.
template <int R>
FASTLM_AVX512 void block_scores_avx512_r(const float* q, int d, const float* kt, float* s) {
  __m512 acc[R][4];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int t = 0; t < d; ++t) {
    const float* kr = kt + t * kTile;
    const __m512 k0 = _mm512_loadu_ps(kr), k1 = _mm512_loadu_ps(kr + 16);
    const __m512 k2 = _mm512_loadu_ps(kr + 32), k3 = _mm512_loadu_ps(kr + 48);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512 qb = _mm512_set1_ps(q[r * d + t]);
      acc[r][0] = _mm512_fmadd_ps(qb, k0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(qb, k1, acc[r][1]);
      acc[r][2] = _mm512_fmadd_ps(qb, k2, acc[r][2]);
      acc[r][3] = _mm512_fmadd_ps(qb, k3, acc[r][3]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int c = 0; c < 4; ++c) _mm512_storeu_ps(s + r * kTile + 16 * c, acc[r][c]);
}

// Narrow tiles (the last of a range): R rows x 16 keys.
template <int R>
FASTLM_AVX512 void block_scores_avx512_r16(const float* q, int d, const float* kt, int c0,
                                           float* s) {
  __m512 acc[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  for (int t = 0; t < d; ++t) {
    const __m512 k = _mm512_loadu_ps(kt + t * kTile + c0);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(q[r * d + t]), k, acc[r]);
  }
#pragma GCC unroll 16
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
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i) {
    const __m512 al = _mm512_set1_ps(alpha[i]);
#pragma GCC unroll 16
    for (int w = 0; w < W; ++w)
      r[i][w] = _mm512_mul_ps(_mm512_loadu_ps(acc + i * d + c0 + 16 * w), al);
  }
  for (int j = 0; j < nk; ++j) {
    __m512 vw[W];
#pragma GCC unroll 16
    for (int w = 0; w < W; ++w) vw[w] = _mm512_loadu_ps(v + j * d + c0 + 16 * w);
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const __m512 pb = _mm512_set1_ps(p[i * kTile + j]);
#pragma GCC unroll 16
      for (int w = 0; w < W; ++w) r[i][w] = _mm512_fmadd_ps(pb, vw[w], r[i][w]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 16
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

FASTLM_INLINE float hmax8(__m256 v) {
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  return _mm_cvtss_f32(m4);
}

// AVX2 conversion (also used on AVX-512 machines): 8 keys x 8 elements of d per step, widened
// in registers and transposed with unpack/shuffle/permute; keys past the last multiple of 8 go
// through the scalar loop. Needs d % 8 == 0.
FASTLM_INLINE void transpose8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

template <typename T>
void transpose_k_avx2(const T* const* rows, int nk, int d, float* kt) {
  int j = 0;
  for (; j + 8 <= nk; j += 8) {
    for (int t = 0; t < d; t += 8) {
      __m256 r[8];
#pragma GCC unroll 16
      for (int u = 0; u < 8; ++u) r[u] = simd::load8(rows[j + u] + t);
      transpose8(r);
#pragma GCC unroll 16
      for (int u = 0; u < 8; ++u) _mm256_storeu_ps(kt + (t + u) * kTile + j, r[u]);
    }
  }
  if (j < nk) transpose_k_scalar(rows + j, nk - j, d, kt + j);
}

template <typename T>
void copy_v_avx2(const T* const* rows, int nk, int d, float* v) {
  for (int j = 0; j < nk; ++j)
    for (int t = 0; t < d; t += 8) _mm256_storeu_ps(v + j * d + t, simd::load8(rows[j] + t));
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
#pragma GCC unroll 16
    for (int i = 0; i < NQ; ++i)
#pragma GCC unroll 16
      for (int u = 0; u < 4; ++u) acc[i][u] = _mm512_setzero_ps();
    for (int c = 0; c < d; c += 16) {
      __m512 k[4];
#pragma GCC unroll 16
      for (int u = 0; u < 4; ++u) k[u] = simd::load16(rows[j + u] + c);
#pragma GCC unroll 16
      for (int i = 0; i < NQ; ++i) {
        const __m512 qv = _mm512_loadu_ps(q + i * d + c);
#pragma GCC unroll 16
        for (int u = 0; u < 4; ++u) acc[i][u] = _mm512_fmadd_ps(qv, k[u], acc[i][u]);
      }
    }
#pragma GCC unroll 16
    for (int i = 0; i < NQ; ++i)
      _mm_storeu_ps(s + i * kTile + j,
                    simd::hsum8x4(simd::fold16(acc[i][0]), simd::fold16(acc[i][1]),
                                  simd::fold16(acc[i][2]), simd::fold16(acc[i][3])));
  }
  for (; j < nk; ++j) {
    __m512 acc[NQ];
#pragma GCC unroll 16
    for (int i = 0; i < NQ; ++i) acc[i] = _mm512_setzero_ps();
    for (int c = 0; c < d; c += 16) {
      const __m512 k = simd::load16(rows[j] + c);
#pragma GCC unroll 16
      for (int i = 0; i < NQ; ++i)
        acc[i] = _mm512_fmadd_ps(_mm512_loadu_ps(q + i * d + c), k, acc[i]);
    }
#pragma GCC unroll 16
    for (int i = 0; i < NQ; ++i) s[i * kTile + j] = _mm512_reduce_add_ps(acc[i]);
  }
}

template <typename T, int NQ, int W>
FASTLM_AVX512 void stream_pv_avx512_w(const float* p, const T* const* rows, int nk, int d,
                                      const float* alpha, float* acc, int c0) {
  __m512 r[NQ][W];
#pragma GCC unroll 16
  for (int i = 0; i < NQ; ++i) {
    const __m512 al = _mm512_set1_ps(alpha[i]);
#pragma GCC unroll 16
    for (int w = 0; w < W; ++w)
      r[i][w] = _mm512_mul_ps(_mm512_loadu_ps(acc + i * d + c0 + 16 * w), al);
  }
  for (int j = 0; j < nk; ++j) {
    __m512 vw[W];
#pragma GCC unroll 16
    for (int w = 0; w < W; ++w) vw[w] = simd::load16(rows[j] + c0 + 16 * w);
#pragma GCC unroll 16
    for (int i = 0; i < NQ; ++i) {
      const __m512 pb = _mm512_set1_ps(p[i * kTile + j]);
#pragma GCC unroll 16
      for (int w = 0; w < W; ++w) r[i][w] = _mm512_fmadd_ps(pb, vw[w], r[i][w]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < NQ; ++i)
#pragma GCC unroll 16
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

// Decode scores in the block path's order (batch-invariant mode): s[i * kTile + j] is one fma
// chain over d from 0, as block_scores_avx2 computes it on transpose_k's tile, so the same bits,
// but the K rows are transposed in registers and used at once instead of through the f32 tile.
// 16 keys (two groups of 8, one key per lane) per pass: NQ x 2 chains. A group's rows u and
// u + 4 share a register (one 128-bit half each), so a 4x4 transpose within the halves puts 8
// keys in the lanes. bf16 rows: a 32-bit lane holds the pair (k[t], k[t + 1]), so one transpose
// covers 8 elements of d: k[t] is the low half shifted up (exact f32), k[t + 1] the high half
// masked; f32 rows: 4 elements. Keys past nk repeat the last row (their lanes land in s past nk,
// which is never read).
template <typename T, int NQ>
void decode_scores_avx2(const float* q, const T* const* rows, int nk, int d, float* s) {
  constexpr bool kF32 = std::is_same_v<T, float>;
  constexpr int kSpan = kF32 ? 4 : 8;  // elements of d per transpose
  const __m256i high = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  for (int j = 0; j < nk; j += 16) {
    const T* r[16];
#pragma GCC unroll 16
    for (int u = 0; u < 16; ++u) r[u] = rows[std::min(j + u, nk - 1)];
    __m256 acc[NQ][2];
#pragma GCC unroll 16
    for (int i = 0; i < NQ; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (int t = 0; t < d; t += kSpan) {
#pragma GCC unroll 2
      for (int g = 0; g < 2; ++g) {
        // Each group loads its own broadcasts of q: shared with the other group, they would
        // outlive the 16 ymm registers and be spilled.
        const float* qt = q + t;
        asm volatile("" : "+r"(qt));
        __m256 y[4];
#pragma GCC unroll 4
        for (int u = 0; u < 4; ++u)
          y[u] = _mm256_insertf128_ps(
              _mm256_castps128_ps256(
                  _mm_loadu_ps(reinterpret_cast<const float*>(r[8 * g + u] + t))),
              _mm_loadu_ps(reinterpret_cast<const float*>(r[8 * g + 4 + u] + t)), 1);
        const __m256 a0 = _mm256_unpacklo_ps(y[0], y[1]), a1 = _mm256_unpackhi_ps(y[0], y[1]);
        const __m256 a2 = _mm256_unpacklo_ps(y[2], y[3]), a3 = _mm256_unpackhi_ps(y[2], y[3]);
        const __m256 z[4] = {_mm256_shuffle_ps(a0, a2, 0x44), _mm256_shuffle_ps(a0, a2, 0xEE),
                             _mm256_shuffle_ps(a1, a3, 0x44), _mm256_shuffle_ps(a1, a3, 0xEE)};
#pragma GCC unroll 4
        for (int p = 0; p < 4; ++p) {
          if constexpr (kF32) {
#pragma GCC unroll 16
            for (int i = 0; i < NQ; ++i)
              acc[i][g] = _mm256_fmadd_ps(_mm256_broadcast_ss(qt + i * d + p), z[p], acc[i][g]);
          } else {
            const __m256i zi = _mm256_castps_si256(z[p]);
            const __m256 lo = _mm256_castsi256_ps(_mm256_slli_epi32(zi, 16));
#pragma GCC unroll 16
            for (int i = 0; i < NQ; ++i)
              acc[i][g] = _mm256_fmadd_ps(_mm256_broadcast_ss(qt + i * d + 2 * p), lo, acc[i][g]);
            const __m256 hi = _mm256_castsi256_ps(_mm256_and_si256(zi, high));
#pragma GCC unroll 16
            for (int i = 0; i < NQ; ++i)
              acc[i][g] =
                  _mm256_fmadd_ps(_mm256_broadcast_ss(qt + i * d + 2 * p + 1), hi, acc[i][g]);
          }
        }
      }
    }
#pragma GCC unroll 16
    for (int i = 0; i < NQ; ++i) {
      _mm256_storeu_ps(s + i * kTile + j, acc[i][0]);
      _mm256_storeu_ps(s + i * kTile + j + 8, acc[i][1]);
    }
  }
}

// AVX2: two keys per pass keeps NQ x 2 accumulators within the 16 ymm registers.
template <typename T, int NQ>
void stream_scores_avx2(const float* q, const T* const* rows, int nk, int d, float* s) {
  int j = 0;
  for (; j + 2 <= nk; j += 2) {
    __m256 acc[NQ][2];
#pragma GCC unroll 16
    for (int i = 0; i < NQ; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (int c = 0; c < d; c += 8) {
      const __m256 k0 = simd::load8(rows[j] + c), k1 = simd::load8(rows[j + 1] + c);
#pragma GCC unroll 16
      for (int i = 0; i < NQ; ++i) {
        const __m256 qv = _mm256_loadu_ps(q + i * d + c);
        acc[i][0] = _mm256_fmadd_ps(qv, k0, acc[i][0]);
        acc[i][1] = _mm256_fmadd_ps(qv, k1, acc[i][1]);
      }
    }
#pragma GCC unroll 16
    for (int i = 0; i < NQ; ++i) {
      s[i * kTile + j] = simd::hsum8(acc[i][0]);
      s[i * kTile + j + 1] = simd::hsum8(acc[i][1]);
    }
  }
  for (; j < nk; ++j) {
#pragma GCC unroll 16
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
#pragma GCC unroll 16
  for (int i = 0; i < NQ; ++i) {
    const __m256 al = _mm256_set1_ps(alpha[i]);
#pragma GCC unroll 16
    for (int w = 0; w < W; ++w)
      r[i][w] = _mm256_mul_ps(_mm256_loadu_ps(acc + i * d + c0 + 8 * w), al);
  }
  for (int j = 0; j < nk; ++j) {
    __m256 vw[W];
#pragma GCC unroll 16
    for (int w = 0; w < W; ++w) vw[w] = simd::load8(rows[j] + c0 + 8 * w);
#pragma GCC unroll 16
    for (int i = 0; i < NQ; ++i) {
      const __m256 pb = _mm256_broadcast_ss(p + i * kTile + j);
#pragma GCC unroll 16
      for (int w = 0; w < W; ++w) r[i][w] = _mm256_fmadd_ps(pb, vw[w], r[i][w]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < NQ; ++i)
#pragma GCC unroll 16
    for (int w = 0; w < W; ++w) _mm256_storeu_ps(acc + i * d + c0 + 8 * w, r[i][w]);
}

template <typename T, int NQ>
void stream_pv_avx2(const float* p, const T* const* rows, int nk, int d, const float* alpha,
                    float* acc) {
  int c = 0;
  for (; c + 16 <= d; c += 16) stream_pv_avx2_w<T, NQ, 2>(p, rows, nk, d, alpha, acc, c);
  if (c < d) stream_pv_avx2_w<T, NQ, 1>(p, rows, nk, d, alpha, acc, c);
}

// ---------------------------------------------------------------- integer scores (AVX2)
// IntScoresFn's contract (paged_attention_tiles.h): rows quantized to int16 with their own
// scales, exact int32 dot products, s = float(isum) * (dq * dk).

int int_limit(int d) { return static_cast<int>(std::floor(std::sqrt(2147483647.0 / d))); }

// A row's scale (amax / lim) and the factor onto the integers (lim / amax; 0 for a zero row):
// every kernel derives a row's integers from these, so a row gets the same ones everywhere.
FASTLM_INLINE float row_factor(float amax, float lim, float* scale) {
  *scale = amax / lim;
  return amax > 0.0f ? lim / amax : 0.0f;
}

// row_factor for 8 rows at once (IEEE division gives every lane the bits of the scalar one):
// the scales to scale[0..7], the factors returned.
FASTLM_INLINE __m256 row_factors8(__m256 amax, float lim, float* scale) {
  const __m256 l = _mm256_set1_ps(lim);
  _mm256_storeu_ps(scale, _mm256_div_ps(amax, l));
  return _mm256_and_ps(_mm256_div_ps(l, amax),
                       _mm256_cmp_ps(amax, _mm256_setzero_ps(), _CMP_GT_OQ));
}

// amax of 8 bf16 rows of D elements (D % 16 == 0), exactly as the float max of |x|: a finite
// bf16 without its sign bit orders like its magnitude, so 16 unsigned 16-bit maxima a register,
// then the 8 rows' 8 lanes each reduced together by unpacks (no scalar round trip per row).
template <int D>
FASTLM_INLINE __m256 amax_bf16_rows8(const uint16_t* const* rows) {
  const __m256i magnitude = _mm256_set1_epi16(0x7fff);
  __m128i m[8];
#pragma GCC unroll 8
  for (int u = 0; u < 8; ++u) {
    const auto* r = reinterpret_cast<const __m256i*>(rows[u]);
    __m256i a = _mm256_and_si256(_mm256_loadu_si256(r), magnitude);
#pragma GCC unroll 8
    for (int c = 1; c < D / 16; ++c)
      a = _mm256_max_epu16(a, _mm256_and_si256(_mm256_loadu_si256(r + c), magnitude));
    m[u] = _mm_max_epu16(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
  }
  // Rows (2i, 2i+1) in alternate 16-bit lanes, then 4 rows in 16-bit lanes 0..3, then all 8.
  __m128i p[4];
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i)
    p[i] = _mm_max_epu16(_mm_unpacklo_epi16(m[2 * i], m[2 * i + 1]),
                         _mm_unpackhi_epi16(m[2 * i], m[2 * i + 1]));
  const __m128i q0 = _mm_max_epu16(_mm_unpacklo_epi32(p[0], p[1]), _mm_unpackhi_epi32(p[0], p[1]));
  const __m128i q1 = _mm_max_epu16(_mm_unpacklo_epi32(p[2], p[3]), _mm_unpackhi_epi32(p[2], p[3]));
  const __m128i r = _mm_max_epu16(_mm_unpacklo_epi64(q0, q1), _mm_unpackhi_epi64(q0, q1));
  // bf16 bits -> f32: the high half of each 32-bit lane.
  const __m128i zero = _mm_setzero_si128();
  return _mm256_castsi256_ps(
      _mm256_set_m128i(_mm_unpackhi_epi16(zero, r), _mm_unpacklo_epi16(zero, r)));
}

// A bf16 K row of D elements -> D / 16 registers of int32 pairs (lane l of register c: elements
// 16c + 2l and 16c + 2l + 1, vpmaddwd's pairs), with the factor of its scale. A 32-bit lane of the
// row holds the pair already: the low half shifted up is the even element as f32, the high half
// masked the odd.
template <int D>
FASTLM_INLINE void quantize_k_row(const uint16_t* row, __m256 f, __m256i* pairs) {
  const __m256i high = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
#pragma GCC unroll 8
  for (int c = 0; c < D / 16; ++c) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 16 * c));
    const __m256 ev = _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
    const __m256 od = _mm256_castsi256_ps(_mm256_and_si256(x, high));
    // cvtps rounds to nearest even (MXCSR's default), |q| <= lim < 2^15: the low 16 bits are q.
    const __m256i e = _mm256_cvtps_epi32(_mm256_mul_ps(ev, f));
    const __m256i o = _mm256_cvtps_epi32(_mm256_mul_ps(od, f));
    pairs[c] = _mm256_blend_epi16(e, _mm256_slli_epi32(o, 16), 0xAA);
  }
}

// Eight K rows (pointers; repeat one for fewer rows): their scales to dk[0..7] and factors.
template <int D>
FASTLM_INLINE void k_factors8(const uint16_t* const* rows, float lim, float* dk, float* f) {
  _mm256_storeu_ps(f, row_factors8(amax_bf16_rows8<D>(rows), lim, dk));
}

// 16 int32 (a, b) -> 16 int16 in element order (packs interleaves the 128-bit lanes).
FASTLM_INLINE __m256i pack16(__m256i a, __m256i b) {
  return _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xd8);
}

// Query rows (f32, d % 16 == 0) -> int16 rows in element order and their scales.
void quantize_q_avx2(const float* q, int nq, int d, int16_t* qi, float* dq) {
  const float lim = static_cast<float>(int_limit(d));
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  for (int i = 0; i < nq; ++i) {
    const float* row = q + static_cast<int64_t>(i) * d;
    __m256 amax = _mm256_setzero_ps();
    for (int t = 0; t < d; t += 8)
      amax = _mm256_max_ps(amax, _mm256_and_ps(_mm256_loadu_ps(row + t), abs_mask));
    const __m256 f = _mm256_set1_ps(row_factor(hmax8(amax), lim, dq + i));
    for (int t = 0; t < d; t += 16) {
      const __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(row + t), f));
      const __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(row + t + 8), f));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(qi + static_cast<int64_t>(i) * d + t),
                          pack16(a, b));
    }
  }
}

// K rows -> kq ([d / 2][kTile] pairs) and dk: eight keys at a time, their pair registers
// transposed so each store writes one pair of d for eight keys.
template <int D>
void quantize_k_avx2(const uint16_t* const* rows, int nk, int, int32_t* kq, float* dk) {
  const float lim = static_cast<float>(int_limit(D));
  int j = 0;
  for (; j < nk; j += 8) {
    // The last group repeats its last row past nk (scales and pairs past nk are zeroed below).
    const uint16_t* r8[8];
    for (int u = 0; u < 8; ++u) r8[u] = rows[std::min(j + u, nk - 1)];
    alignas(32) float f[8];
    k_factors8<D>(r8, lim, dk + j, f);
    __m256i pr[8][D / 16];
#pragma GCC unroll 8
    for (int u = 0; u < 8; ++u) quantize_k_row<D>(r8[u], _mm256_broadcast_ss(f + u), pr[u]);
#pragma GCC unroll 8
    for (int c = 0; c < D / 16; ++c) {
      __m256 r[8];
#pragma GCC unroll 8
      for (int u = 0; u < 8; ++u) r[u] = _mm256_castsi256_ps(pr[u][c]);
      transpose8(r);
#pragma GCC unroll 8
      for (int l = 0; l < 8; ++l)
        _mm256_storeu_ps(reinterpret_cast<float*>(kq + (8 * c + l) * kTile + j), r[l]);
    }
  }
  for (j = nk; j % 16 != 0; ++j) {
    dk[j] = 0.0f;
    for (int p = 0; p < D / 2; ++p) kq[p * kTile + j] = 0;
  }
}

// The integer tiles' inner product: acc[r][h] (8 int32 lanes) = sum over Steps of
// a[r * lda + 2 step .. + 1] (an int16 pair, broadcast) times the 8 pairs at b + step * ldb +
// 8 h, one vpmaddwd + vpaddd each. Steps is a template argument so the loop unrolls fully: with a
// loop left, GCC kept the sums on the stack (half the speed of the f32 tiles).
template <int R, int Steps>
FASTLM_INLINE void madd_rows(const int16_t* a, int lda, const int32_t* b, int ldb,
                             __m256i (&acc)[R][2]) {
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
#pragma GCC unroll 64
  for (int p = 0; p < Steps; ++p) {
    const int32_t* br = b + p * ldb;
    const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(br));
    const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(br + 8));
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      int32_t pair;
      std::memcpy(&pair, a + r * lda + 2 * p, 4);
      const __m256i ab = _mm256_set1_epi32(pair);
      acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(ab, b0));
      acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(ab, b1));
      // Keeps each sum a chain in its register (as qgemm's xtile).
      __asm__("" : "+x"(acc[r][0]), "+x"(acc[r][1]));
    }
  }
}

// R query rows x 16 keys at c0 (pairs of d: the D / 2 steps).
template <int R, int D>
void int_scores_avx2_r(const int16_t* qi, const float* dq, const int32_t* kq, const float* dk,
                       int c0, float* s) {
  __m256i acc[R][2];
  madd_rows<R, D / 2>(qi, D, kq + c0, kTile, acc);
  const __m256 d0 = _mm256_loadu_ps(dk + c0), d1 = _mm256_loadu_ps(dk + c0 + 8);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const __m256 qd = _mm256_broadcast_ss(dq + r);
    _mm256_storeu_ps(s + r * kTile + c0,
                     _mm256_mul_ps(_mm256_cvtepi32_ps(acc[r][0]), _mm256_mul_ps(qd, d0)));
    _mm256_storeu_ps(s + r * kTile + c0 + 8,
                     _mm256_mul_ps(_mm256_cvtepi32_ps(acc[r][1]), _mm256_mul_ps(qd, d1)));
  }
}

template <int D>
void int_scores_avx2(const int16_t* qi, const float* dq, int nq, int, const int32_t* kq,
                     const float* dk, int nk, float* s) {
  using RowsFn = void (*)(const int16_t*, const float*, const int32_t*, const float*, int, float*);
  // The last 1..5 rows of a call.
  static constexpr RowsFn kRest[] = {nullptr,
                                     int_scores_avx2_r<1, D>,
                                     int_scores_avx2_r<2, D>,
                                     int_scores_avx2_r<3, D>,
                                     int_scores_avx2_r<4, D>,
                                     int_scores_avx2_r<5, D>};
  for (int c0 = 0; c0 < nk; c0 += 16) {
    int i = 0;
    for (; i + 6 <= nq; i += 6)
      int_scores_avx2_r<6, D>(qi + i * D, dq + i, kq, dk, c0, s + i * kTile);
    if (i < nq) kRest[nq - i](qi + i * D, dq + i, kq, dk, c0, s + i * kTile);
  }
}

// ---- integer P V
constexpr float kPvLimit = 5792.0f;  // floor(sqrt((2^31 - 1) / kTile))
static_assert(kTile == 64, "kPvLimit assumes 64 keys a tile");

// V rows -> vq (key pairs interleaved per element of d, IntPvFn's layout) and dv; keys nk .. kTile
// zero.
template <int D>
void quantize_v_avx2(const uint16_t* const* rows, int nk, int, int32_t* vq, float* dv) {
  const __m256i high = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  for (int j8 = 0; j8 < kTile; j8 += 8) {
    alignas(32) float f[8];
    if (j8 >= nk) {
      std::fill(dv + j8, dv + j8 + 8, 0.0f);
      std::fill(f, f + 8, 0.0f);
    } else {
      const uint16_t* r8[8];
      for (int u = 0; u < 8; ++u) r8[u] = rows[std::min(j8 + u, nk - 1)];
      _mm256_store_ps(f, row_factors8(amax_bf16_rows8<D>(r8), kPvLimit, dv + j8));
      for (int u = nk - j8; u < 8; ++u) dv[j8 + u] = f[u] = 0.0f;  // keys past nk: zero
    }
    for (int j = j8; j < j8 + 8; j += 2) {
      // A key's even and odd elements (the two halves of its bf16 pairs) quantized apart, each
      // paired with the next key's, then interleaved back into element order.
      // (Keys past nk read the last row with factor 0: zeros.)
      const uint16_t* r0 = rows[std::min(j, nk - 1)];
      const uint16_t* r1 = rows[std::min(j + 1, nk - 1)];
      const __m256 f0 = _mm256_broadcast_ss(f + j - j8), f1 = _mm256_broadcast_ss(f + j + 1 - j8);
      int32_t* out = vq + (j / 2) * D;
#pragma GCC unroll 8
      for (int c = 0; c < D / 16; ++c) {
        const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r0 + 16 * c));
        const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r1 + 16 * c));
        auto q = [&](__m256i bits, __m256 fac) {
          return _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_castsi256_ps(bits), fac));
        };
        const __m256i pe =
            _mm256_blend_epi16(q(_mm256_slli_epi32(x0, 16), f0),
                               _mm256_slli_epi32(q(_mm256_slli_epi32(x1, 16), f1), 16), 0xAA);
        const __m256i po =
            _mm256_blend_epi16(q(_mm256_and_si256(x0, high), f0),
                               _mm256_slli_epi32(q(_mm256_and_si256(x1, high), f1), 16), 0xAA);
        const __m256i lo = _mm256_unpacklo_epi32(pe, po), hi = _mm256_unpackhi_epi32(pe, po);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 16 * c),
                            _mm256_permute2x128_si256(lo, hi, 0x20));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 16 * c + 8),
                            _mm256_permute2x128_si256(lo, hi, 0x31));
      }
    }
  }
}

// R rows x 16 elements of d at c0 over the tile's 32 key pairs (always all of them, so the loop
// unrolls fully); wi: the rows' quantized weights, kTile int16 each.
template <int R, int D>
void int_pv_avx2_r(const int16_t* wi, const float* dw, const int32_t* vq, int c0,
                   const float* alpha, float* acc) {
  __m256i a[R][2];
  madd_rows<R, kTile / 2>(wi, kTile, vq + c0, D, a);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const __m256 al = _mm256_broadcast_ss(alpha + r), sc = _mm256_broadcast_ss(dw + r);
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      float* o = acc + r * D + c0 + 8 * h;
      const __m256 x = _mm256_mul_ps(_mm256_loadu_ps(o), al);
      _mm256_storeu_ps(o, _mm256_fmadd_ps(_mm256_cvtepi32_ps(a[r][h]), sc, x));
    }
  }
}

template <int D>
void int_pv_avx2(const float* p, int nq, const int32_t* vq, const float* dv, int nk, int,
                 const float* alpha, float* acc) {
  using RowsFn = void (*)(const int16_t*, const float*, const int32_t*, int, const float*, float*);
  static constexpr RowsFn kRows[] = {nullptr,
                                     int_pv_avx2_r<1, D>,
                                     int_pv_avx2_r<2, D>,
                                     int_pv_avx2_r<3, D>,
                                     int_pv_avx2_r<4, D>,
                                     int_pv_avx2_r<5, D>,
                                     int_pv_avx2_r<6, D>};
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  for (int i0 = 0; i0 < nq; i0 += 6) {
    const int n = std::min(6, nq - i0);
    alignas(32) int16_t wi[6 * kTile];
    float dw[6];
    for (int r = 0; r < n; ++r) {
      // w_j = p_j * dv_j over the tile (0 past nk), quantized with the row's own scale.
      const float* pr = p + (i0 + r) * kTile;
      __m256 w[kTile / 8];
      __m256 amax = _mm256_setzero_ps();
#pragma GCC unroll 8
      for (int c = 0; c < kTile / 8; ++c) {
        const int valid = std::clamp(nk - 8 * c, 0, 8);
        const __m256 keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(
            _mm256_set1_epi32(valid), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
        w[c] = _mm256_and_ps(
            _mm256_mul_ps(_mm256_loadu_ps(pr + 8 * c), _mm256_loadu_ps(dv + 8 * c)), keep);
        amax = _mm256_max_ps(amax, _mm256_and_ps(w[c], abs_mask));
      }
      const __m256 f = _mm256_set1_ps(row_factor(hmax8(amax), kPvLimit, dw + r));
#pragma GCC unroll 4
      for (int c = 0; c < kTile / 16; ++c)
        _mm256_store_si256(reinterpret_cast<__m256i*>(wi + r * kTile + 16 * c),
                           pack16(_mm256_cvtps_epi32(_mm256_mul_ps(w[2 * c], f)),
                                  _mm256_cvtps_epi32(_mm256_mul_ps(w[2 * c + 1], f))));
    }
    for (int c0 = 0; c0 < D; c0 += 16)
      kRows[n](wi, dw, vq, c0, alpha + i0, acc + static_cast<int64_t>(i0) * D);
  }
}

// Lane u: the sum of the 8 int32 lanes of p[u] (exact), by unpacks and adds.
FASTLM_INLINE __m256i hsum8x8_epi32(const __m256i* p) {
  const auto fold4 = [](__m256i a, __m256i b, __m256i c, __m256i e) {
    const __m256i x = _mm256_add_epi32(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b));
    const __m256i y = _mm256_add_epi32(_mm256_unpacklo_epi32(c, e), _mm256_unpackhi_epi32(c, e));
    return _mm256_add_epi32(_mm256_unpacklo_epi64(x, y), _mm256_unpackhi_epi64(x, y));
  };
  const __m256i q0 = fold4(p[0], p[1], p[2], p[3]), q1 = fold4(p[4], p[5], p[6], p[7]);
  return _mm256_add_epi32(_mm256_permute2x128_si256(q0, q1, 0x20),
                          _mm256_permute2x128_si256(q0, q1, 0x31));
}

// Decode: eight keys a pass, each K row quantized as quantize_k_avx2 does and dotted with the NQ
// query rows; the eight sums of a query row reduced into the lanes of one register, then scaled
// as int_scores_avx2_r scales them. Keys past nk repeat the last row (their scores land past nk,
// never read).
template <int NQ, int D>
void int_decode_scores_avx2(const int16_t* qi, const float* dq, const uint16_t* const* rows, int nk,
                            int, float* s) {
  const float lim = static_cast<float>(int_limit(D));
  for (int j = 0; j < nk; j += 8) {
    const uint16_t* r8[8];
    for (int u = 0; u < 8; ++u) r8[u] = rows[std::min(j + u, nk - 1)];
    alignas(32) float dk[8], f[8];
    k_factors8<D>(r8, lim, dk, f);
    __m256i part[NQ][8];
#pragma GCC unroll 8
    for (int u = 0; u < 8; ++u) {
      __m256i pr[D / 16];
      quantize_k_row<D>(r8[u], _mm256_broadcast_ss(f + u), pr);
#pragma GCC unroll 4
      for (int i = 0; i < NQ; ++i) {
        const auto* qv = reinterpret_cast<const __m256i*>(qi + i * D);
        __m256i a = _mm256_madd_epi16(_mm256_loadu_si256(qv), pr[0]);
#pragma GCC unroll 8
        for (int c = 1; c < D / 16; ++c)
          a = _mm256_add_epi32(a, _mm256_madd_epi16(_mm256_loadu_si256(qv + c), pr[c]));
        part[i][u] = a;
      }
    }
    const __m256 dkv = _mm256_load_ps(dk);
#pragma GCC unroll 4
    for (int i = 0; i < NQ; ++i) {
      const __m256 c = _mm256_mul_ps(_mm256_broadcast_ss(dq + i), dkv);
      _mm256_storeu_ps(s + i * kTile + j,
                       _mm256_mul_ps(_mm256_cvtepi32_ps(hsum8x8_epi32(part[i])), c));
    }
  }
}

#endif  // __x86_64__

// ---------------------------------------------------------------- online softmax

FASTLM_ROW_INLINE float softmax_row_scalar(float* s, int nk, int lo, int hi, float* m, float* l) {
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

// exp(x) for x <= 0 (a score minus its row's running max): 2^(x log2 e) = 2^n 2^f with n an
// integer and |f| <= 1/2, 2^f a degree-5 polynomial (relative error < 2e-7), 2^n added to its
// exponent field. 11 operations where simd::exp8 takes 17. x clamps at -86, so 2^n stays
// normal; exp(-86) ~ 4e-38 is far below the resolution of any softmax sum.
FASTLM_INLINE __m256 exp_neg8(__m256 x) {
  const __m256 log2e = _mm256_set1_ps(1.44269504088896341f);
  const __m256 round = _mm256_set1_ps(12582912.0f);  // 1.5 * 2^23: the sum's low bits hold n
  x = _mm256_max_ps(x, _mm256_set1_ps(-86.0f));
  const __m256 t = _mm256_fmadd_ps(x, log2e, round);
  const __m256 n = _mm256_sub_ps(t, round);
  const __m256 f = _mm256_fmsub_ps(x, log2e, n);
  __m256 p = _mm256_set1_ps(1.3264718e-3f);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.6715130e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.5507340e-2f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.4022242e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.9314700e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
  // The low bits of t are n (two's complement), so t << 23 is n in the exponent field.
  return _mm256_castsi256_ps(
      _mm256_add_epi32(_mm256_castps_si256(p), _mm256_slli_epi32(_mm256_castps_si256(t), 23)));
}

// The new running max of a row and the factor its sum and acc are rescaled by; alpha is exactly 1
// when the max holds (the common case deep into a long context), without an exp.
FASTLM_INLINE float update_running(float tile_max, const float* m, float* m_new) {
  *m_new = std::max(*m, tile_max);
  if (*m == kNegInf) return 0.0f;
  return *m_new == *m ? 1.0f : fast_exp(*m - *m_new);
}

// Lane r of the result = op over the 8 lanes of v[r], for the rows r < 8 of a micro-block: pairs
// of lanes, then pairs of pairs, then the two 128-bit halves, so each lane's order is fixed
// whichever rows share the call. op is max or add.
template <__m256 (*op)(__m256, __m256)>
FASTLM_INLINE __m256 reduce8x8(const __m256 v[8]) {
  auto pairs = [](__m256 a, __m256 b) {
    return op(_mm256_shuffle_ps(a, b, 0x88), _mm256_shuffle_ps(a, b, 0xDD));
  };
  const __m256 abcd = pairs(pairs(v[0], v[1]), pairs(v[2], v[3]));
  const __m256 efgh = pairs(pairs(v[4], v[5]), pairs(v[6], v[7]));
  return op(_mm256_permute2f128_ps(abcd, efgh, 0x20), _mm256_permute2f128_ps(abcd, efgh, 0x31));
}
FASTLM_INLINE __m256 max_ps(__m256 a, __m256 b) { return _mm256_max_ps(a, b); }
FASTLM_INLINE __m256 add_ps(__m256 a, __m256 b) { return _mm256_add_ps(a, b); }

// Up to 8 query rows that see every key of a full tile (lo = 0, hi = nk = kTile), side by side:
// each row's max and sum over its 8 vectors as one register each, then the horizontal steps, the
// running max, alpha (exactly 1 when the max holds: exp_neg8(0) = 1) and l for all the rows in
// the lanes of one register. Done a row at a time, each row's chain (max -> alpha -> exps ->
// sum -> l) serialized the micro-block. Every step is lane-wise, so a row's bits do not depend
// on which rows share the call.
FASTLM_INLINE void softmax_full_rows_avx2(float* s, int n, float* m, float* l, float* alpha) {
  alignas(32) float mb[8] = {}, lb[8] = {};
  for (int r = 0; r < n; ++r) {
    mb[r] = m[r];
    lb[r] = l[r];
  }
  __m256 part[8];
  for (int r = n; r < 8; ++r) part[r] = _mm256_set1_ps(kNegInf);
#pragma GCC unroll 1
  for (int r = 0; r < n; ++r) {
    const float* sr = s + r * kTile;
    __m256 mx = _mm256_loadu_ps(sr);
#pragma GCC unroll 16
    for (int c = 1; c < kTile / 8; ++c) mx = _mm256_max_ps(mx, _mm256_loadu_ps(sr + 8 * c));
    part[r] = mx;
  }
  const __m256 m_old = _mm256_load_ps(mb);
  const __m256 m_new = _mm256_max_ps(m_old, reduce8x8<max_ps>(part));
  // A row that saw nothing yet (m = -inf) has nothing to rescale.
  const __m256 unseen = _mm256_cmp_ps(m_old, _mm256_set1_ps(kNegInf), _CMP_EQ_OQ);
  const __m256 a = _mm256_andnot_ps(unseen, exp_neg8(_mm256_sub_ps(m_old, m_new)));
  alignas(32) float mn[8];
  _mm256_store_ps(mn, m_new);
  for (int r = n; r < 8; ++r) part[r] = _mm256_setzero_ps();
#pragma GCC unroll 1
  for (int r = 0; r < n; ++r) {
    float* sr = s + r * kTile;
    const __m256 mv = _mm256_broadcast_ss(mn + r);
    __m256 v[kTile / 8];
#pragma GCC unroll 16
    for (int c = 0; c < kTile / 8; ++c) {
      v[c] = exp_neg8(_mm256_sub_ps(_mm256_loadu_ps(sr + 8 * c), mv));
      _mm256_storeu_ps(sr + 8 * c, v[c]);
    }
    // Pairwise: four independent adds, then two, then one.
#pragma GCC unroll 16
    for (int w = kTile / 16; w >= 1; w /= 2)
#pragma GCC unroll 16
      for (int c = 0; c < w; ++c) v[c] = _mm256_add_ps(v[c], v[c + w]);
    part[r] = v[0];
  }
  _mm256_store_ps(lb, _mm256_fmadd_ps(_mm256_load_ps(lb), a, reduce8x8<add_ps>(part)));
  alignas(32) float ab[8];
  _mm256_store_ps(ab, a);
  for (int r = 0; r < n; ++r) {
    m[r] = mn[r];
    l[r] = lb[r];
    alpha[r] = ab[r];
  }
}

// A query row that sees part of a tile (or of a tile shorter than kTile). Which path a row
// takes (this or softmax_full_rows_avx2) depends only on its absolute position relative to the
// tile (lo, hi), never on how many keys the work item covers (nk).
FASTLM_INLINE float softmax_partial_row_avx2(float* s, int nk, int lo, int hi, float* m, float* l) {
  // Part of the row visible: 8-key chunks [c0, c1) cover [lo, hi); lanes outside it are masked
  // to exactly 0 and chunks outside it are zero-filled without being summed.
  if (lo >= hi) {
    std::fill(s, s + nk, 0.0f);
    return 1.0f;
  }
  const int c0 = lo & ~7, c1 = (hi + 7) & ~7;
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  auto valid = [&](int c) {
    const __m256i j = _mm256_add_epi32(lane, _mm256_set1_epi32(c));
    return _mm256_castsi256_ps(_mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(lo), j),
                                                   _mm256_cmpgt_epi32(_mm256_set1_epi32(hi), j)));
  };
  const __m256 neg_inf = _mm256_set1_ps(kNegInf);
  __m256 mx = neg_inf;
  for (int c = c0; c < c1; c += 8)
    mx = _mm256_max_ps(mx, _mm256_blendv_ps(neg_inf, _mm256_loadu_ps(s + c), valid(c)));
  float m_new;
  const float alpha = update_running(hmax8(mx), m, &m_new);
  const __m256 mv = _mm256_set1_ps(m_new);
  __m256 sv = _mm256_setzero_ps();
  for (int c = c0; c < c1; c += 8) {
    const __m256 e = _mm256_and_ps(exp_neg8(_mm256_sub_ps(_mm256_loadu_ps(s + c), mv)), valid(c));
    _mm256_storeu_ps(s + c, e);
    sv = _mm256_add_ps(sv, e);
  }
  std::fill(s, s + c0, 0.0f);
  std::fill(s + c1, s + std::max(c1, nk), 0.0f);
  *l = *l * alpha + simd::hsum8(sv);
  *m = m_new;
  return alpha;
}

FASTLM_AVX512 FASTLM_INLINE __mmask16 lane_mask(int from, int to) {
  // Lanes [from, to) of a 16-lane chunk, with from/to clamped to [0, 16].
  const int a = std::clamp(from, 0, 16), b = std::clamp(to, 0, 16);
  return static_cast<__mmask16>(((1u << b) - 1u) & ~((1u << a) - 1u));
}

FASTLM_AVX512 FASTLM_INLINE float softmax_row_avx512(float* s, int nk, int lo, int hi, float* m,
                                                     float* l) {
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

// The rows of a micro-block (SoftmaxRowsFn), with the row function inlined.
FASTLM_ROW_INLINE void row_range(int p, int j0, int nk, int window, int* lo, int* hi) {
  *hi = std::min(nk, p - j0 + 1);
  *lo = window > 0 ? std::max(0, p - window + 1 - j0) : 0;
}

// One body for every ISA: the target attribute must be on the caller for its row function to
// inline, so a macro rather than a template.
#define FASTLM_SOFTMAX_ROWS(name, target, row_fn)                                         \
  target void name(float* s, int n, int nk, const int* pos, int j0, int window, float* m, \
                   float* l, float* alpha) {                                              \
    for (int i = 0; i < n; ++i) {                                                         \
      int lo, hi;                                                                         \
      row_range(pos[i], j0, nk, window, &lo, &hi);                                        \
      alpha[i] = row_fn(s + i * kTile, nk, lo, hi, m + i, l + i);                         \
    }                                                                                     \
  }

FASTLM_SOFTMAX_ROWS(softmax_rows_scalar, , softmax_row_scalar)
#if defined(__x86_64__)
FASTLM_SOFTMAX_ROWS(softmax_rows_avx512, FASTLM_AVX512, softmax_row_avx512)
#endif
#undef FASTLM_SOFTMAX_ROWS

#if defined(__x86_64__)
// AVX2: runs of up to 8 rows that see the whole tile go through softmax_full_rows_avx2 together;
// the others (the causal diagonal, a window's edge, a short last tile) one at a time.
void softmax_rows_avx2(float* s, int n, int nk, const int* pos, int j0, int window, float* m,
                       float* l, float* alpha) {
  auto full = [&](int i) {
    int lo, hi;
    row_range(pos[i], j0, nk, window, &lo, &hi);
    return lo == 0 && hi == kTile;
  };
  for (int i = 0; i < n;) {
    int e = i;
    while (e < n && e - i < 8 && full(e)) ++e;
    if (e > i) {
      softmax_full_rows_avx2(s + i * kTile, e - i, m + i, l + i, alpha + i);
      i = e;
      continue;
    }
    int lo, hi;
    row_range(pos[i], j0, nk, window, &lo, &hi);
    alpha[i] = softmax_partial_row_avx2(s + i * kTile, nk, lo, hi, m + i, l + i);
    ++i;
  }
}
#endif

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
// The AVX2 decode scores also serve AVX-512 machines: their block scores are the same fma chains.
template <typename T, int... N>
void fill_decode_scores_avx2(Kernels<T>& k, std::integer_sequence<int, N...>) {
  ((k.decode_scores[N] = decode_scores_avx2<T, N + 1>), ...);
}
template <int D, int... N>
void fill_int_scores_avx2(Kernels<uint16_t>& k, std::integer_sequence<int, N...>) {
  k.quantize_q = quantize_q_avx2;
  k.quantize_k = quantize_k_avx2<D>;
  k.int_scores = int_scores_avx2<D>;
  ((k.int_decode_scores[N] = int_decode_scores_avx2<N + 1, D>), ...);
  k.quantize_v = quantize_v_avx2<D>;
  k.int_pv = int_pv_avx2<D>;
}
#endif

}  // namespace

template <typename T>
Kernels<T> pick_kernels([[maybe_unused]] int d) {
  Kernels<T> k;
  k.scores = block_scores_scalar;
  k.pv = block_pv_scalar;
  k.softmax = softmax_rows_scalar;
  k.transpose_k = transpose_k_scalar<T>;
  k.copy_v = copy_v_scalar<T>;
#if defined(__x86_64__)
  if (active_isa() != Isa::kScalar && d % 8 == 0) {
    k.transpose_k = transpose_k_avx2<T>;
    k.copy_v = copy_v_avx2<T>;
  }
#endif
  switch (active_isa()) {
    case Isa::kAvx512Bf16:
    case Isa::kAvx512:
#if defined(__x86_64__)
      if (d % 16 == 0) {
        k.scores = block_scores_avx512;
        k.pv = block_pv_avx512;
        k.softmax = softmax_rows_avx512;
        fill_stream_avx512(k, std::make_integer_sequence<int, kMaxStreamQueries>{});
        fill_decode_scores_avx2(k, std::make_integer_sequence<int, kMaxStreamQueries>{});
        return k;
      }
#endif
      [[fallthrough]];
    case Isa::kAvx2:
#if defined(__x86_64__)
      if (d % 8 == 0) {
        k.scores = block_scores_avx2;
        k.pv = block_pv_avx2;
        k.softmax = softmax_rows_avx2;
        fill_stream_avx2(k, std::make_integer_sequence<int, kMaxStreamQueries>{});
        fill_decode_scores_avx2(k, std::make_integer_sequence<int, kMaxStreamQueries>{});
        // bf16 caches: integer scores (twice the products per instruction of the f32 FMA on
        // AVX2; AVX-512 machines keep their 16-lane FMAs). f32 caches stay exact.
        if constexpr (std::is_same_v<T, uint16_t>) {
          if (d == 64)
            fill_int_scores_avx2<64>(k, std::make_integer_sequence<int, kMaxStreamQueries>{});
          else if (d == 128)
            fill_int_scores_avx2<128>(k, std::make_integer_sequence<int, kMaxStreamQueries>{});
        }
        return k;
      }
#endif
      [[fallthrough]];
    case Isa::kScalar:
      return k;
  }
  return k;
}

template Kernels<float> pick_kernels<float>(int d);
template Kernels<uint16_t> pick_kernels<uint16_t>(int d);

}  // namespace fastlm::cpu::attn
