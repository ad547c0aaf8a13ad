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
#include "cpu/paged_attention_tiles.h"
#include "cpu/simd.h"

#if defined(__x86_64__)
// GCC 12's AVX-512 headers use _mm512_undefined_*() operands that trip this warning.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

// The work planner and the tile loop; the per-ISA tile kernels are cpu/paged_attention_tiles.*.
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
// to ~1e-6 relative; except bf16 caches on AVX2 (head_dim 64 / 128), whose scores and P V are
// exact int32 sums of int16 rows quantized with their own scales (paged_attention_tiles.h's
// IntScoresFn / IntPvFn): ~1.25x the f32 tiles' speed on Zen 3, outputs within ~3e-3 of exact
// arithmetic's on random caches (bf16 storage of K and V itself costs more). When there
// are too few items to occupy every thread (one decoding sequence), the KV range is split into
// parts whose partial (m, l, acc) are merged afterwards (flash-decoding). Batch invariance
// (cpu/batch_invariant.h): a query row's arithmetic must depend only on q and its own KV positions.
// So tiles start at multiples of kTile (absolute positions), decode computes scores in the block
// path's order (the streaming score kernels sum d in a different order; their P V is the same
// arithmetic and stays), and the KV range is cut into segments fixed by position (every kSplitKeys
// positions), each with its own online softmax, whose states merge in segment order by one formula
// (merge_state); a segment a row cannot see is skipped, so one visible segment is exactly the
// unsplit result. Whether the segments run as separate work items (few groups: one decoding
// sequence) or one after another inside one item (prefill: plenty of groups, and no partials in
// memory), a row gets the same bits.

namespace fastlm::cpu {

namespace {

using attn::Kernels;
using attn::kMaxStreamQueries;
using attn::kTile;
using attn::pick_kernels;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Query vectors (rows x GQA group) per prefill block: enough to amortize the K/V conversion
// (at 192 it was ~15% of the scores + P V time on the AVX2 EPYC, at 384 ~7%; the scores, softmax
// and P V run on micro-blocks, so the block's size only sets how often a tile is converted).
constexpr int kBlockQueries = 384;
constexpr int kMaxBlockRows = 128;
// Query vectors per scores -> softmax -> P V pass of the block path (a multiple of the AVX2
// tiles' 6 rows and the AVX-512 tiles' 4).
constexpr int kMicroRows = 12;
// Batch-invariant mode: KV parts are the positions [p * kSplitKeys, (p + 1) * kSplitKeys).
// Two tiles: a decode step of a 129..256-token context (3 KV heads) splits into 6 items for 2
// threads instead of 3 (at 4 tiles one thread ran two heads while the other waited); prefill
// merges its states once per 128 keys (~0.5% of a segment's work).
constexpr int kSplitKeys = 2 * kTile;

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

// A softmax state [m, l, acc[d]]: nothing seen yet.
void init_state(float* st, int d) {
  st[0] = kNegInf;
  st[1] = 0.0f;
  std::fill(st + 2, st + 2 + d, 0.0f);
}

// Folds the state (m, l, acc) of the next KV segment into st; the one formula every path uses,
// always in segment order. A segment that saw no visible key (m = -inf) changes nothing.
// The first visible segment is copied; after that one of the two weights is exactly 1 (no exp)
// and each element is one fma, spelled out so the compiler cannot contract it differently in
// the two callers.
void merge_state(float* st, float m, float l, const float* acc, int d) {
  if (m == kNegInf) return;
  if (st[0] == kNegInf) {
    st[0] = m;
    st[1] = l;
    std::memcpy(st + 2, acc, d * sizeof(float));
    return;
  }
  const float m_new = std::max(st[0], m);
  const float w_old = st[0] == m_new ? 1.0f : std::exp(st[0] - m_new);
  const float w = m == m_new ? 1.0f : std::exp(m - m_new);
  st[0] = m_new;
  st[1] = std::fma(l, w, st[1] * w_old);
  for (int t = 0; t < d; ++t) st[2 + t] = std::fma(acc[t], w, st[2 + t] * w_old);
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
  // Integer scores and P V (bf16 caches on AVX2) everywhere: block path and decode.
  const bool int_scores = kern.int_scores != nullptr;
  const bool int_pv = kern.int_pv != nullptr;
  const bool stream_scores = streaming && !batch_invariant() && !int_scores;
  // Decode under batch invariance: block-order scores straight from the cache rows when the ISA
  // has them (kt unused), else transpose_k + block scores.
  const bool decode_scores = streaming && !stream_scores && kern.decode_scores[0] != nullptr;
  const bool need_kt = !stream_scores && !decode_scores && !int_scores;
  const bool need_kq = int_scores && !streaming;
  const bool need_vt = !streaming && !int_pv;

  thread_local std::vector<float> buf;
  const size_t need = static_cast<size_t>(nq) * (2 * d + kTile + 4) +
                      (need_kt ? static_cast<size_t>(kTile) * d : 0) +
                      (need_vt ? static_cast<size_t>(kTile) * d : 0) +
                      static_cast<size_t>(nq) * (d + 2) +  // merged segment states
                      (int_scores ? static_cast<size_t>(nq) * (d / 2 + 1) : 0) +
                      (need_kq ? static_cast<size_t>(kTile) * (d / 2 + 1) : 0) +
                      (int_pv ? static_cast<size_t>(kTile) * (d / 2 + 1) : 0);
  if (buf.size() < need) buf.resize(need);
  float* qs = buf.data();                          // [nq, d] scaled queries
  float* acc = qs + nq * d;                        // [nq, d]
  float* s = acc + nq * d;                         // [nq, kTile] scores, then probabilities
  float* m = s + nq * kTile;                       // [nq] running max
  float* l = m + nq;                               // [nq] running sum
  float* alpha = l + nq;                           // [nq] rescale factor of this tile
  int* pos = reinterpret_cast<int*>(alpha + nq);   // [nq] absolute position of the query
  float* kt = reinterpret_cast<float*>(pos + nq);  // [d, kTile] (block scores)
  float* vt = kt + (need_kt ? kTile * d : 0);      // [kTile, d] (block path)
  float* total = vt + (need_vt ? kTile * d : 0);   // [nq, d + 2] merged segment states
  float* dq = total + nq * (d + 2);                // [nq] query scales (integer scores)
  auto* qi = reinterpret_cast<int16_t*>(dq + (int_scores ? nq : 0));     // [nq, d] int16 queries
  float* dk = reinterpret_cast<float*>(qi + (int_scores ? nq * d : 0));  // [kTile] key scales
  auto* kq = reinterpret_cast<int32_t*>(dk + (need_kq ? kTile : 0));     // [d / 2, kTile] pairs
  float* dv = reinterpret_cast<float*>(kq + (need_kq ? kTile * d / 2 : 0));  // [kTile] V scales
  auto* vq = reinterpret_cast<int32_t*>(dv + (int_pv ? kTile : 0));          // [kTile / 2, d] pairs
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
  }
  if (int_scores) kern.quantize_q(qs, nq, d, qi, dq);
  // Segments walked in this item (batch-invariant mode: the fixed kSplitKeys positions), merged
  // into the running state total = [m, l, acc[d]] per query as each ends.
  const bool segmented = batch_invariant() && it.kv_end > it.kv_begin &&
                         (it.kv_end - 1) / kSplitKeys != it.kv_begin / kSplitKeys;
  if (segmented)
    for (int i = 0; i < nq; ++i) init_state(total + static_cast<int64_t>(i) * (d + 2), d);

  const int window = a.sliding_window;
  for (int seg = it.kv_begin; seg < it.kv_end;) {
    const int seg_end =
        segmented ? std::min(it.kv_end, (seg / kSplitKeys + 1) * kSplitKeys) : it.kv_end;
    for (int i = 0; i < nq; ++i) {
      m[i] = kNegInf;
      l[i] = 0.0f;
    }
    std::fill(acc, acc + nq * d, 0.0f);
    for (int j0 = seg; j0 < seg_end; j0 += kTile) {
      const int nk = std::min(kTile, seg_end - j0);
      auto offset = [&](int p) {
        return (static_cast<int64_t>(table[p / a.block_size]) * a.block_size + p % a.block_size) *
               row_stride;
      };
      for (int j = 0; j < nk; ++j) row_off[j] = offset(j0 + j);
      // KV blocks are scattered, so the hardware prefetcher cannot run ahead across them:
      // request the next tile's rows while this one computes. Decode is bound by that latency
      // (into L1: its rows are read straight from the cache); the block path converts the rows
      // of a tile once per ~100k FMAs, so into L2, leaving L1 to the converted tiles.
      {
        const int next_end = std::min(streaming ? seg_end : it.kv_end, j0 + 2 * kTile);
        const int row_bytes = g.num_heads * d * static_cast<int>(sizeof(T));
        for (int p = j0 + kTile; p < next_end; ++p) {
          const char* kr = reinterpret_cast<const char*>(kc + offset(p) + int64_t{g.kv_head} * d);
          const char* vr = reinterpret_cast<const char*>(vc + offset(p) + int64_t{g.kv_head} * d);
          for (int b = 0; b < row_bytes; b += 64) {
            if (streaming) {
              __builtin_prefetch(kr + b);
              __builtin_prefetch(vr + b);
            } else {
              __builtin_prefetch(kr + b, 0, 2);
              __builtin_prefetch(vr + b, 0, 2);
            }
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
        auto softmax_rows = [&](int b0, int b1, int keys) {
          kern.softmax(s + b0 * kTile, b1 - b0, keys, pos + b0, j0, window, m + b0, l + b0,
                       alpha + b0);
        };
        if (!streaming) {
          // Block path: the tile's K and V converted once, then scores, softmax and P V of a
          // few rows at a time, so their scores stay in L1 between the three steps (a row's
          // arithmetic does not depend on which rows share a kernel call). On the causal
          // diagonal the keys past the micro-block's last row are skipped: they would only
          // add exact zeros (p = 0) to P V.
          if (int_scores) {
            kern.quantize_k(krows, nk, d, kq, dk);
          } else {
            kern.transpose_k(krows, nk, d, kt);
          }
          if (int_pv) {
            kern.quantize_v(vrows, nk, d, vq, dv);
          } else {
            kern.copy_v(vrows, nk, d, vt);
          }
          for (int b0 = i0; b0 < i1; b0 += kMicroRows) {
            const int b1 = std::min(i1, b0 + kMicroRows);
            const int keys = std::min(nk, pos[b1 - 1] - j0 + 1);
            if (int_scores) {
              kern.int_scores(qi + b0 * d, dq + b0, b1 - b0, d, kq, dk, keys, s + b0 * kTile);
            } else {
              kern.scores(qs + b0 * d, b1 - b0, d, kt, keys, s + b0 * kTile);
            }
            softmax_rows(b0, b1, keys);
            if (int_pv) {
              kern.int_pv(s + b0 * kTile, b1 - b0, vq, dv, keys, d, alpha + b0, acc + b0 * d);
            } else {
              kern.pv(s + b0 * kTile, b1 - b0, vt, keys, d, alpha + b0, acc + b0 * d);
            }
          }
          continue;
        }
        if (stream_scores) {
          kern.stream_scores[n - 1](qs + i0 * d, krows, nk, d, s + i0 * kTile);
        } else if (int_scores) {
          kern.int_decode_scores[n - 1](qi + i0 * d, dq + i0, krows, nk, d, s + i0 * kTile);
        } else if (decode_scores) {
          kern.decode_scores[n - 1](qs + i0 * d, krows, nk, d, s + i0 * kTile);
        } else {
          kern.transpose_k(krows, nk, d, kt);
          kern.scores(qs + i0 * d, n, d, kt, nk, s + i0 * kTile);
        }
        softmax_rows(i0, i1, nk);
        if (int_pv) {
          // The block path's integer P V (its tile quantized first): the same bits.
          kern.quantize_v(vrows, nk, d, vq, dv);
          kern.int_pv(s + i0 * kTile, n, vq, dv, nk, d, alpha + i0, acc + i0 * d);
        } else {
          kern.stream_pv[n - 1](s + i0 * kTile, vrows, nk, d, alpha + i0, acc + i0 * d);
        }
      }
    }
    if (segmented)
      for (int i = 0; i < nq; ++i)
        merge_state(total + static_cast<int64_t>(i) * (d + 2), m[i], l[i], acc + i * d, d);
    seg = seg_end;
  }
  if (segmented) {
    // The merged state becomes this item's (m, l, acc).
    for (int i = 0; i < nq; ++i) {
      const float* st = total + static_cast<int64_t>(i) * (d + 2);
      m[i] = st[0];
      l[i] = st[1];
      std::memcpy(acc + i * d, st + 2, d * sizeof(float));
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
  std::vector<float> state(d + 2);
  for (int i = 0; i < nq; ++i) {
    init_state(state.data(), d);
    for (int p = 0; p < g.parts; ++p) {
      const float* part = scratch + g.scratch + p * part_stride + i * (d + 2);
      merge_state(state.data(), part[0], part[1], part + 2, d);
    }
    float* dst = a.out + query_offset(a, g, i);
    const float inv = state[1] > 0.0f ? 1.0f / state[1] : 0.0f;
    for (int t = 0; t < d; ++t) dst[t] = state[2 + t] * inv;
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
  // Fewer groups than threads (one decoding sequence): a decode group per KV head instead, so
  // the heads run on different threads. Each head's rows compute the same numbers either way.
  const bool heads_apart = threads > 1 && count_groups(block_rows) < threads;

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
      if (q_len == 1 && stream_all_heads && !heads_apart) {
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
  if (invariant && threads > 1 && num_groups < want) {
    for (Group& g : groups) {
      g.parts = (g.kv_end - 1) / kSplitKeys - g.kv_begin / kSplitKeys + 1;
      if (g.parts > 1) {
        g.scratch = scratch_size;
        const int nq = (g.row_end - g.row_begin) * group_size * g.num_heads;
        scratch_size += static_cast<int64_t>(g.parts) * nq * (a.head_dim + 2);
      }
    }
  } else if (!invariant && threads > 1 && num_groups < want) {
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
      if (invariant && g.parts > 1) {
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
    // A decode step's few partials merge faster on this thread than a fork takes.
#pragma omp parallel for schedule(dynamic, 1) if (scratch_size >= kParallelMinElems)
    for (int64_t gi = 0; gi < num_groups; ++gi)
      if (groups[gi].parts > 1) merge_group(a, groups[gi], scratch.data());
  }
}

template void paged_attention<DType::kF32>(const PagedAttentionArgs&);
template void paged_attention<DType::kBF16>(const PagedAttentionArgs&);

bool attention_int16(DType cache, int head_dim) {
  if (cache == DType::kBF16) return pick_kernels<uint16_t>(head_dim).int_scores != nullptr;
  if (cache == DType::kF32) return pick_kernels<float>(head_dim).int_scores != nullptr;
  return false;
}

}  // namespace fastlm::cpu
