#pragma once
// The tile kernels of the CPU paged attention, per ISA (scalar, AVX2, AVX-512), behind one table:
// cpu/paged_attention_cpu.cc plans the work items (query blocks x KV parts), walks each item's
// KV range in tiles of kTile keys and calls these for the scores, the online softmax and P V.
// Block kernels read K transposed to f32 ([d][kTile]) and V as f32 rows ([kTile][d]); stream
// kernels read up to kMaxStreamQueries query vectors against K / V rows straight from the cache
// (T: float, or uint16_t holding bf16 bits, widened in registers).
#include <cstdint>

namespace fastlm::cpu::attn {

inline constexpr int kTile = 64;
// The streaming path handles up to this many query vectors per item.
inline constexpr int kMaxStreamQueries = 4;

// s[i * kTile + j] = dot(q[i], k[:, j]) for i < nq, j < nk; kt is K transposed, [d][kTile].
// Columns nk..kTile may be written with garbage (never read).
using BlockScoresFn = void (*)(const float* q, int nq, int d, const float* kt, int nk, float* s);
// acc[i] = acc[i] * alpha[i] + sum_j p[i * kTile + j] * v[j] for i < nq (v is [nk][d]).
using BlockPvFn = void (*)(const float* p, int nq, const float* v, int nk, int d,
                           const float* alpha, float* acc);
// One query row of a tile: scores s[0, nk) become probabilities; keys outside [lo, hi) are
// masked to exactly 0. Updates the running max m and sum l; returns the factor acc must be
// rescaled by.
using SoftmaxFn = float (*)(float* s, int nk, int lo, int hi, float* m, float* l);
// SoftmaxFn over rows [0, n) of a tile whose first key is at position j0: row i (s + i * kTile,
// m[i], l[i], alpha[i]) at position pos[i] sees keys [lo, hi) of the tile, hi = min(nk, pos[i] -
// j0 + 1) and lo = max(0, pos[i] - window + 1 - j0) with a window (> 0), else 0. One call per
// micro-block, so the row function is inlined and the out-of-order core overlaps rows.
using SoftmaxRowsFn = void (*)(float* s, int n, int nk, const int* pos, int j0, int window,
                               float* m, float* l, float* alpha);

// kt[t * kTile + j] = k_j[t] (K of a tile transposed to f32, [d][kTile]) and v[j * d + t] =
// v_j[t] (V widened to f32, [nk][d]) for j < nk, from the cache rows.
template <typename T>
using ConvertFn = void (*)(const T* const* rows, int nk, int d, float* out);

template <typename T>
using StreamScoresFn = void (*)(const float* q, const T* const* rows, int nk, int d, float* s);
template <typename T>
using StreamPvFn = void (*)(const float* p, const T* const* rows, int nk, int d, const float* alpha,
                            float* acc);

// Integer scores (AVX2 machines, bf16 caches, d = 64 or 128): every query row and every K row is
// quantized once to int16 with a scale of its own (x ~= scale * xi, scale = amax / lim, lim =
// floor(sqrt((2^31 - 1) / d)): 5792 at d = 64, 4095 at 128, so d products of two such values sum
// to an int32 exactly), and s = float(sum_t qi[t] ki[t]) * (dq * dk): vpmaddwd multiplies and
// adds two int16 pairs, twice the products per instruction of an f32 FMA. The sums are exact, so
// the block tile and the decode kernel (which quantizes the K rows it reads) give the same bits;
// the rounding adds about a quarter of the error bf16 storage of K already makes (elements within
// 2^4 of their row's largest keep all of their bf16 bits).
// qi: int16 [nq][d], dq [nq].
using QuantizeQFn = void (*)(const float* q, int nq, int d, int16_t* qi, float* dq);
// kq[p * kTile + j] = the int16 pair (k_j[2p], k_j[2p + 1]) as one int32, dk[j] the scale of key
// j, for j < nk; columns nk .. the next multiple of 16 are zero.
template <typename T>
using QuantizeKFn = void (*)(const T* const* rows, int nk, int d, int32_t* kq, float* dk);
// s[i * kTile + j] for i < nq, j < nk (columns past nk up to the next multiple of 16 written).
using IntScoresFn = void (*)(const int16_t* qi, const float* dq, int nq, int d, const int32_t* kq,
                             const float* dk, int nk, float* s);
// The same numbers straight from the cache rows (decode): each K row quantized as QuantizeKFn.
template <typename T>
using IntDecodeScoresFn = void (*)(const int16_t* qi, const float* dq, const T* const* rows, int nk,
                                   int d, float* s);

// P V the same way (same machines): each V row quantized to int16 with its own scale dv (lim =
// 5792: a tile's kTile = 64 products of two such values sum to an int32 exactly), each query row
// of the tile's probabilities weighted w_j = p_j * dv_j and quantized with one scale dw per row
// and tile, and acc = fma(float(sum_j wi_j vi_j[t]), dw, acc * alpha). vq[m * d + t] = the pair
// (vi_2m[t], vi_2m+1[t]) as one int32; keys nk .. kTile are zero. The kernel always runs the
// kTile keys (probabilities past nk count as 0), so block tiles cut on the causal diagonal and
// decode (which quantizes its tile the same way first) give the same bits.
template <typename T>
using QuantizeVFn = void (*)(const T* const* rows, int nk, int d, int32_t* vq, float* dv);
using IntPvFn = void (*)(const float* p, int nq, const int32_t* vq, const float* dv, int nk, int d,
                         const float* alpha, float* acc);

template <typename T>
struct Kernels {
  BlockScoresFn scores = nullptr;
  BlockPvFn pv = nullptr;
  SoftmaxRowsFn softmax = nullptr;
  ConvertFn<T> transpose_k = nullptr;
  ConvertFn<T> copy_v = nullptr;
  // Indexed by the number of query vectors - 1; null: use the block path.
  StreamScoresFn<T> stream_scores[kMaxStreamQueries] = {};
  StreamPvFn<T> stream_pv[kMaxStreamQueries] = {};
  // Scores from the cache rows with the same bits as transpose_k + scores (each (row, key) one
  // fma chain over d from 0): decode under batch invariance. Null: use those two.
  StreamScoresFn<T> decode_scores[kMaxStreamQueries] = {};
  // Integer scores (see IntScoresFn); null: the f32 kernels above. When set, every path uses
  // them (block tiles, decode with or without batch invariance).
  QuantizeQFn quantize_q = nullptr;
  QuantizeKFn<T> quantize_k = nullptr;
  IntScoresFn int_scores = nullptr;
  IntDecodeScoresFn<T> int_decode_scores[kMaxStreamQueries] = {};
  // Integer P V (see IntPvFn); set with the integer scores.
  QuantizeVFn<T> quantize_v = nullptr;
  IntPvFn int_pv = nullptr;
};

// The kernels of the active ISA (cpu/isa.h) for head dimension d (the vector paths need d a
// multiple of their lane count); T is float or uint16_t.
template <typename T>
Kernels<T> pick_kernels(int d);

}  // namespace fastlm::cpu::attn
