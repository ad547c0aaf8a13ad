#include "cpu/encoder_attention_cpu.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/cpu_common.h"
#include "cpu/isa.h"
#include "cpu/simd.h"

#if defined(__x86_64__)
// GCC 12's AVX-512 headers use _mm512_undefined_*() operands that trip these warnings.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

// One work item = one sequence x one head. Encoder sequences are short (BERT <= 512 tokens,
// Whisper 1500), so a block of query rows keeps its whole L-long score rows in L1/L2 and no
// online softmax is needed.
// K is gathered transposed ([D, L]) so scores come out 16 keys per vector; V rows are read in
// place from the qkv rows.

namespace fastlm::cpu {
namespace {

struct Item {
  const float* qkv;  // first row of the sequence
  int64_t ld;        // qkv row stride
  int64_t hd;        // num_heads * head_dim (offset of K, 2x that of V)
  int64_t len;       // tokens
  int h;             // head
  int head_dim;
  float scale;
  float* out;  // first out row of the sequence, row stride hd
};

using ItemFn = void (*)(const Item& it, std::vector<float>& kt, std::vector<float>& s);

// Portable body (auto-vectorized at the baseline flags).
void attend_scalar(const Item& it, std::vector<float>& kt, std::vector<float>& s) {
  const int64_t len = it.len;
  const int D = it.head_dim;
  kt.resize(static_cast<size_t>(D * len));
  s.resize(static_cast<size_t>(len + D));
  for (int64_t j = 0; j < len; ++j) {
    const float* kj = it.qkv + j * it.ld + it.hd + static_cast<int64_t>(it.h) * D;
    for (int t = 0; t < D; ++t) kt[t * len + j] = kj[t];
  }
  float* si = s.data();
  float* acc = s.data() + len;
  for (int64_t i = 0; i < len; ++i) {
    const float* qi = it.qkv + i * it.ld + static_cast<int64_t>(it.h) * D;
    std::fill(si, si + len, 0.0f);
    for (int t = 0; t < D; ++t) {
      const float qt = qi[t] * it.scale;
      const float* kr = kt.data() + t * len;
      for (int64_t j = 0; j < len; ++j) si[j] += qt * kr[j];
    }
    float mx = si[0];
    for (int64_t j = 1; j < len; ++j) mx = std::max(mx, si[j]);
    float sum = 0.0f;
    for (int64_t j = 0; j < len; ++j) {
      si[j] = fast_exp(si[j] - mx);
      sum += si[j];
    }
    const float inv = 1.0f / sum;
    std::fill(acc, acc + D, 0.0f);
    for (int64_t j = 0; j < len; ++j) {
      const float p = si[j];
      const float* vr = it.qkv + j * it.ld + 2 * it.hd + static_cast<int64_t>(it.h) * D;
      for (int t = 0; t < D; ++t) acc[t] += p * vr[t];
    }
    float* o = it.out + i * it.hd + static_cast<int64_t>(it.h) * D;
    for (int t = 0; t < D; ++t) o[t] = acc[t] * inv;
  }
}

#if defined(__x86_64__)

FASTLM_AVX512 FASTLM_INLINE __mmask16 tail_mask(int64_t n) {
  return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
}

// R query rows [i0, i0 + R) against all keys. kt is [D, lp] (lp = len rounded up to 16, zero
// padded); s holds R rows of lp scores, then probabilities.
template <int R>
FASTLM_AVX512 void attend_rows_avx512(const Item& it, const float* kt, int64_t lp, float* s,
                                      int64_t i0) {
  const int D = it.head_dim;
  const int64_t len = it.len;
  const float* q[R];
  for (int r = 0; r < R; ++r) q[r] = it.qkv + (i0 + r) * it.ld + static_cast<int64_t>(it.h) * D;
  const __m512 scale = _mm512_set1_ps(it.scale);
  // Scores: R accumulators per 16 keys, one K^T load per R FMAs.
  for (int64_t c = 0; c < lp; c += 16) {
    __m512 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    for (int t = 0; t < D; ++t) {
      const __m512 kv = _mm512_loadu_ps(kt + t * lp + c);
      for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(q[r][t]), kv, acc[r]);
    }
    for (int r = 0; r < R; ++r) _mm512_storeu_ps(s + r * lp + c, _mm512_mul_ps(acc[r], scale));
  }
  // Softmax per row; lanes past len become 0 so the P V loop may ignore them.
  float inv[R];
  for (int r = 0; r < R; ++r) {
    float* sr = s + r * lp;
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int64_t c = 0; c < lp; c += 16) {
      mx = _mm512_mask_max_ps(mx, tail_mask(len - c), mx, _mm512_loadu_ps(sr + c));
    }
    const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
    __m512 sum = _mm512_setzero_ps();
    for (int64_t c = 0; c < lp; c += 16) {
      const __m512 e = _mm512_maskz_mov_ps(tail_mask(len - c),
                                           simd::exp16(_mm512_sub_ps(_mm512_loadu_ps(sr + c), m)));
      _mm512_storeu_ps(sr + c, e);
      sum = _mm512_add_ps(sum, e);
    }
    inv[r] = 1.0f / _mm512_reduce_add_ps(sum);
  }
  // P V: R accumulators per 16 head dims, one V load per R FMAs.
  const float* v0 = it.qkv + 2 * it.hd + static_cast<int64_t>(it.h) * D;
  for (int d = 0; d < D; d += 16) {
    const __mmask16 k = tail_mask(D - d);
    __m512 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t j = 0; j < len; ++j) {
      const __m512 vv = _mm512_maskz_loadu_ps(k, v0 + j * it.ld + d);
      for (int r = 0; r < R; ++r) {
        acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(s[r * lp + j]), vv, acc[r]);
      }
    }
    for (int r = 0; r < R; ++r) {
      float* o = it.out + (i0 + r) * it.hd + static_cast<int64_t>(it.h) * D + d;
      _mm512_mask_storeu_ps(o, k, _mm512_mul_ps(acc[r], _mm512_set1_ps(inv[r])));
    }
  }
}

constexpr int kRows = 8;

FASTLM_AVX512 void attend_avx512(const Item& it, std::vector<float>& kt, std::vector<float>& s) {
  const int64_t len = it.len;
  const int D = it.head_dim;
  const int64_t lp = (len + 15) / 16 * 16;
  kt.resize(static_cast<size_t>(D * lp));
  s.resize(static_cast<size_t>(kRows * lp));
  float* ktp = kt.data();
  const float* k0 = it.qkv + it.hd + static_cast<int64_t>(it.h) * D;
  if (len * it.ld < (int64_t{1} << 31)) {
    // K^T by gathers of 16 keys (one per K^T row and chunk): scattered scalar stores with a
    // stride of lp floats cost more than the scores themselves.
    const __m512i lanes = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i ld = _mm512_set1_epi32(static_cast<int>(it.ld));
    for (int64_t c = 0; c < len; c += 16) {
      const __mmask16 k = tail_mask(len - c);
      const __m512i idx = _mm512_mullo_epi32(lanes, ld);
      const float* base = k0 + c * it.ld;
      for (int t = 0; t < D; ++t) {
        const __m512 g = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), k, idx, base + t, 4);
        _mm512_storeu_ps(ktp + t * lp + c, g);
      }
    }
  } else {
    for (int t = 0; t < D; ++t) std::fill(ktp + t * lp + len, ktp + (t + 1) * lp, 0.0f);
    for (int64_t j = 0; j < len; ++j) {
      const float* kj = k0 + j * it.ld;
      for (int t = 0; t < D; ++t) ktp[t * lp + j] = kj[t];
    }
  }
  int64_t i = 0;
  for (; i + kRows <= len; i += kRows) attend_rows_avx512<kRows>(it, ktp, lp, s.data(), i);
  switch (len - i) {
    case 7:
      return attend_rows_avx512<7>(it, ktp, lp, s.data(), i);
    case 6:
      return attend_rows_avx512<6>(it, ktp, lp, s.data(), i);
    case 5:
      return attend_rows_avx512<5>(it, ktp, lp, s.data(), i);
    case 4:
      return attend_rows_avx512<4>(it, ktp, lp, s.data(), i);
    case 3:
      return attend_rows_avx512<3>(it, ktp, lp, s.data(), i);
    case 2:
      return attend_rows_avx512<2>(it, ktp, lp, s.data(), i);
    case 1:
      return attend_rows_avx512<1>(it, ktp, lp, s.data(), i);
    default:
      return;
  }
}

// AVX2. Per (sequence, head): K^T packed [D, lp] (lp = len rounded up to 16, zero padded) and
// V packed in 16-dim column chunks ([len][16] each, the chunk at d starting at d * len), then
// query rows in blocks of kBlockRows: the block's scores against every key (register tiles of
// kTileRows rows x 16 keys, each 16-key slice of K^T reused by all the block's tiles from L1),
// a softmax per row, and P V (tiles of kTileRows rows x 16 dims, each V chunk reused by all the
// block's tiles from L2). A register tile holds 2 x kTileRows accumulators + 2 loads + 1
// broadcast of the 16 ymm registers. Every output element is one chain over keys in order,
// whatever tile or block computes it. Needs D % 8 == 0 (attend_avx2 falls back otherwise).
constexpr int kTileRows = 6;
constexpr int kBlockRows = 4 * kTileRows;

// Scores s[r][c .. c + 16) = scale * q_r . k_j for R rows (q[r] their head slices).
template <int R>
FASTLM_INLINE void score_tile(const float* const* q, const float* kt, int64_t lp, int D,
                              __m256 scale, float* s, int64_t c) {
  __m256 a0[R], a1[R];
  for (int r = 0; r < R; ++r) a0[r] = a1[r] = _mm256_setzero_ps();
  for (int t = 0; t < D; ++t) {
    const __m256 k0 = _mm256_loadu_ps(kt + t * lp + c);
    const __m256 k1 = _mm256_loadu_ps(kt + t * lp + c + 8);
    for (int r = 0; r < R; ++r) {
      const __m256 qv = _mm256_broadcast_ss(q[r] + t);
      a0[r] = _mm256_fmadd_ps(qv, k0, a0[r]);
      a1[r] = _mm256_fmadd_ps(qv, k1, a1[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    _mm256_storeu_ps(s + r * lp + c, _mm256_mul_ps(a0[r], scale));
    _mm256_storeu_ps(s + r * lp + c + 8, _mm256_mul_ps(a1[r], scale));
  }
}

// out[r][0 .. W) = inv[r] * sum_j p[r][j] v_j over W = 16 or 8 dims of a V chunk ([len][W]).
template <int R, int W>
FASTLM_INLINE void pv_tile(const float* s, int64_t lp, const float* vc, int64_t len,
                           const float* inv, float* out, int64_t ldo) {
  constexpr int NV = W / 8;
  __m256 acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_setzero_ps();
  for (int64_t j = 0; j < len; ++j) {
    __m256 x[NV];
    for (int v = 0; v < NV; ++v) x[v] = _mm256_loadu_ps(vc + j * W + 8 * v);
    for (int r = 0; r < R; ++r) {
      const __m256 p = _mm256_broadcast_ss(s + r * lp + j);
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_fmadd_ps(p, x[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r) {
    const __m256 iv = _mm256_set1_ps(inv[r]);
    for (int v = 0; v < NV; ++v)
      _mm256_storeu_ps(out + r * ldo + 8 * v, _mm256_mul_ps(acc[r][v], iv));
  }
}

// Softmax of one row of scores over [0, len) in place; lanes [len, lp) become 0. Returns 1/sum.
float softmax_row_avx2(float* sr, int64_t len, int64_t lp) {
  const int64_t full = len / 8 * 8;
  float m = -INFINITY;
  if (full > 0) {
    __m256 mx = _mm256_loadu_ps(sr);
    for (int64_t c = 8; c < full; c += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(sr + c));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    m = _mm_cvtss_f32(h);
  }
  for (int64_t c = full; c < len; ++c) m = std::max(m, sr[c]);
  const __m256 mv = _mm256_set1_ps(m);
  __m256 sum = _mm256_setzero_ps();
  for (int64_t c = 0; c < full; c += 8) {
    const __m256 e = simd::exp8(_mm256_sub_ps(_mm256_loadu_ps(sr + c), mv));
    _mm256_storeu_ps(sr + c, e);
    sum = _mm256_add_ps(sum, e);
  }
  float total = simd::hsum8(sum);
  for (int64_t c = full; c < len; ++c) {
    sr[c] = fast_exp(sr[c] - m);
    total += sr[c];
  }
  std::fill(sr + len, sr + lp, 0.0f);
  return 1.0f / total;
}

// Calls fn.template operator()<R>() for R in [1, kTileRows] (the rows of a tile).
template <typename Fn>
FASTLM_INLINE void with_rows(int rows, Fn&& fn) {
  switch (rows) {
    case 6:
      return fn.template operator()<6>();
    case 5:
      return fn.template operator()<5>();
    case 4:
      return fn.template operator()<4>();
    case 3:
      return fn.template operator()<3>();
    case 2:
      return fn.template operator()<2>();
    case 1:
      return fn.template operator()<1>();
    default:
      return;
  }
}

void attend_avx2(const Item& it, std::vector<float>& kt, std::vector<float>& s) {
  if (it.head_dim % 8 != 0) return attend_scalar(it, kt, s);
  thread_local std::vector<float> vbuf;
  const int64_t len = it.len;
  const int D = it.head_dim;
  const int64_t lp = (len + 15) / 16 * 16;
  kt.resize(static_cast<size_t>(D * lp));
  vbuf.resize(static_cast<size_t>(D * len));
  s.resize(static_cast<size_t>(kBlockRows * lp));
  float* ktp = kt.data();
  float* vp = vbuf.data();
  const int64_t hoff = static_cast<int64_t>(it.h) * D;
  const float* k0 = it.qkv + it.hd + hoff;
  const float* v0 = it.qkv + 2 * it.hd + hoff;
  for (int t = 0; t < D; ++t) std::fill(ktp + t * lp + len, ktp + (t + 1) * lp, 0.0f);
  for (int64_t j = 0; j < len; ++j) {
    const float* kj = k0 + j * it.ld;
    for (int t = 0; t < D; ++t) ktp[t * lp + j] = kj[t];
    const float* vj = v0 + j * it.ld;
    for (int d = 0; d < D; d += 16) {
      const int w = std::min(16, D - d);
      std::copy(vj + d, vj + d + w, vp + d * len + j * w);
    }
  }
  const __m256 scale = _mm256_set1_ps(it.scale);
  for (int64_t b0 = 0; b0 < len; b0 += kBlockRows) {
    const int64_t nb = std::min<int64_t>(kBlockRows, len - b0);
    const float* q[kBlockRows];
    for (int64_t r = 0; r < nb; ++r) q[r] = it.qkv + (b0 + r) * it.ld + hoff;
    for (int64_t c = 0; c < lp; c += 16) {
      for (int64_t r0 = 0; r0 < nb; r0 += kTileRows) {
        with_rows(static_cast<int>(std::min<int64_t>(kTileRows, nb - r0)), [&]<int R>() {
          score_tile<R>(q + r0, ktp, lp, D, scale, s.data() + r0 * lp, c);
        });
      }
    }
    float inv[kBlockRows];
    for (int64_t r = 0; r < nb; ++r) inv[r] = softmax_row_avx2(s.data() + r * lp, len, lp);
    float* o = it.out + b0 * it.hd + hoff;
    for (int d = 0; d < D; d += 16) {
      const float* vc = vp + d * len;
      for (int64_t r0 = 0; r0 < nb; r0 += kTileRows) {
        with_rows(static_cast<int>(std::min<int64_t>(kTileRows, nb - r0)), [&]<int R>() {
          if (D - d >= 16) {
            pv_tile<R, 16>(s.data() + r0 * lp, lp, vc, len, inv + r0, o + r0 * it.hd + d, it.hd);
          } else {
            pv_tile<R, 8>(s.data() + r0 * lp, lp, vc, len, inv + r0, o + r0 * it.hd + d, it.hd);
          }
        });
      }
    }
  }
}

#endif  // __x86_64__

ItemFn pick_attend() {
  switch (active_isa()) {
    case Isa::kAvx512Bf16:
    case Isa::kAvx512:
#if defined(__x86_64__)
      return attend_avx512;
#endif
      [[fallthrough]];
    case Isa::kAvx2:
#if defined(__x86_64__)
      return attend_avx2;
#endif
      [[fallthrough]];
    case Isa::kScalar:
      return attend_scalar;
  }
  return attend_scalar;
}

}  // namespace

void encoder_attention(const float* qkv, const int32_t* query_start_loc, int num_seqs,
                       int num_heads, int head_dim, float scale, float* out) {
  const int64_t hd = static_cast<int64_t>(num_heads) * head_dim;
  const int64_t ld = 3 * hd;  // qkv row stride
  const int64_t items = static_cast<int64_t>(num_seqs) * num_heads;
  const int64_t total_tokens = query_start_loc[num_seqs];
  const ItemFn fn = pick_attend();
#pragma omp parallel if (total_tokens * hd >= kParallelMinElems)
  {
    std::vector<float> kt, s;
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      const int seq = static_cast<int>(item / num_heads);
      const int64_t row0 = query_start_loc[seq];
      const int64_t len = query_start_loc[seq + 1] - row0;
      if (len <= 0) continue;
      const Item it{
          qkv + row0 * ld, ld, hd, len, static_cast<int>(item % num_heads), head_dim, scale,
          out + row0 * hd};
      fn(it, kt, s);
    }
  }
}

}  // namespace fastlm::cpu
