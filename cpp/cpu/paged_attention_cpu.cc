#include "cpu/paged_attention_cpu.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/cpu_common.h"
#include "cpu/isa.h"
#include "cpu/simd.h"

#if defined(__x86_64__)
// GCC 12's AVX-512 headers use _mm512_undefined_*() operands that trip this warning.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

// Flash-attention style: each work item owns some query rows of one sequence x one KV head
// (all query heads of the GQA group, so K/V are loaded once per group) and a range of KV
// positions, walked in tiles of kTile tokens:
//   1. gather the tile's K and V rows from their blocks into f32 buffers (converting bf16),
//   2. S = Q K^T for all queries of the item (Q pre-scaled),
//   3. online softmax in f32: running max m, sum l, and acc rescaled by exp(m_old - m_new),
//   4. acc += P V.
// When there are too few items to occupy every thread (one decoding sequence), the KV range
// is split into parts whose partial (m, l, acc) are merged afterwards (flash-decoding).

namespace fastlm::cpu {

namespace {

constexpr int kTile = 32;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// s[i * lds + j] = dot(q[i], k[j]) for i < nq, j < nk (q rows and k rows of d floats).
using ScoresFn = void (*)(const float* q, int nq, const float* k, int nk, int d, float* s, int lds);
// acc[i] = acc[i] * alpha[i] + sum_j p[i * ldp + j] * v[j] for i < nq.
using PvFn = void (*)(const float* p, int ldp, int nq, const float* v, int nk, int d,
                      const float* alpha, float* acc);

void scores_scalar(const float* q, int nq, const float* k, int nk, int d, float* s, int lds) {
  for (int i = 0; i < nq; ++i)
    for (int j = 0; j < nk; ++j) {
      float acc = 0.0f;
      for (int t = 0; t < d; ++t) acc += q[i * d + t] * k[j * d + t];
      s[i * lds + j] = acc;
    }
}

void pv_scalar(const float* p, int ldp, int nq, const float* v, int nk, int d, const float* alpha,
               float* acc) {
  for (int i = 0; i < nq; ++i) {
    float* a = acc + i * d;
    for (int t = 0; t < d; ++t) a[t] *= alpha[i];
    for (int j = 0; j < nk; ++j) {
      const float pj = p[i * ldp + j];
      for (int t = 0; t < d; ++t) a[t] += pj * v[j * d + t];
    }
  }
}

#if defined(__x86_64__)

// d % 8 == 0. Four keys at a time share each q load; one hadd tree reduces the four sums.
void scores_avx2(const float* q, int nq, const float* k, int nk, int d, float* s, int lds) {
  for (int i = 0; i < nq; ++i) {
    const float* qi = q + i * d;
    int j = 0;
    for (; j + 4 <= nk; j += 4) {
      const float* k0 = k + j * d;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (int t = 0; t < d; t += 8) {
        const __m256 qv = _mm256_loadu_ps(qi + t);
        a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + t), a0);
        a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + d + t), a1);
        a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 2 * d + t), a2);
        a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 3 * d + t), a3);
      }
      _mm_storeu_ps(s + i * lds + j, simd::hsum8x4(a0, a1, a2, a3));
    }
    for (; j < nk; ++j) {
      __m256 a = _mm256_setzero_ps();
      for (int t = 0; t < d; t += 8)
        a = _mm256_fmadd_ps(_mm256_loadu_ps(qi + t), _mm256_loadu_ps(k + j * d + t), a);
      s[i * lds + j] = simd::hsum8(a);
    }
  }
}

void pv_avx2(const float* p, int ldp, int nq, const float* v, int nk, int d, const float* alpha,
             float* acc) {
  for (int i = 0; i < nq; ++i) {
    float* a = acc + i * d;
    const __m256 al = _mm256_set1_ps(alpha[i]);
    for (int t = 0; t < d; t += 32) {  // up to 4 accumulators stay in registers over all keys
      const int w = std::min(32, d - t) / 8;
      __m256 r[4];
      for (int u = 0; u < w; ++u) r[u] = _mm256_mul_ps(_mm256_loadu_ps(a + t + 8 * u), al);
      for (int j = 0; j < nk; ++j) {
        const __m256 pj = _mm256_set1_ps(p[i * ldp + j]);
        for (int u = 0; u < w; ++u)
          r[u] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(v + j * d + t + 8 * u), r[u]);
      }
      for (int u = 0; u < w; ++u) _mm256_storeu_ps(a + t + 8 * u, r[u]);
    }
  }
}

// d % 16 == 0.
FASTLM_AVX512 void scores_avx512(const float* q, int nq, const float* k, int nk, int d, float* s,
                                 int lds) {
  for (int i = 0; i < nq; ++i) {
    const float* qi = q + i * d;
    int j = 0;
    for (; j + 4 <= nk; j += 4) {
      const float* k0 = k + j * d;
      __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (int t = 0; t < d; t += 16) {
        const __m512 qv = _mm512_loadu_ps(qi + t);
        a0 = _mm512_fmadd_ps(qv, _mm512_loadu_ps(k0 + t), a0);
        a1 = _mm512_fmadd_ps(qv, _mm512_loadu_ps(k0 + d + t), a1);
        a2 = _mm512_fmadd_ps(qv, _mm512_loadu_ps(k0 + 2 * d + t), a2);
        a3 = _mm512_fmadd_ps(qv, _mm512_loadu_ps(k0 + 3 * d + t), a3);
      }
      _mm_storeu_ps(s + i * lds + j, simd::hsum8x4(simd::fold16(a0), simd::fold16(a1),
                                                   simd::fold16(a2), simd::fold16(a3)));
    }
    for (; j < nk; ++j) {
      __m512 a = _mm512_setzero_ps();
      for (int t = 0; t < d; t += 16)
        a = _mm512_fmadd_ps(_mm512_loadu_ps(qi + t), _mm512_loadu_ps(k + j * d + t), a);
      s[i * lds + j] = _mm512_reduce_add_ps(a);
    }
  }
}

FASTLM_AVX512 void pv_avx512(const float* p, int ldp, int nq, const float* v, int nk, int d,
                             const float* alpha, float* acc) {
  for (int i = 0; i < nq; ++i) {
    float* a = acc + i * d;
    const __m512 al = _mm512_set1_ps(alpha[i]);
    for (int t = 0; t < d; t += 128) {  // up to 8 accumulators stay in registers over all keys
      const int w = std::min(128, d - t) / 16;
      __m512 r[8];
      for (int u = 0; u < w; ++u) r[u] = _mm512_mul_ps(_mm512_loadu_ps(a + t + 16 * u), al);
      for (int j = 0; j < nk; ++j) {
        const __m512 pj = _mm512_set1_ps(p[i * ldp + j]);
        for (int u = 0; u < w; ++u)
          r[u] = _mm512_fmadd_ps(pj, _mm512_loadu_ps(v + j * d + t + 16 * u), r[u]);
      }
      for (int u = 0; u < w; ++u) _mm512_storeu_ps(a + t + 16 * u, r[u]);
    }
  }
}

#endif  // __x86_64__

struct Kernels {
  ScoresFn scores;
  PvFn pv;
};

Kernels pick_kernels(int d) {
  switch (active_isa()) {
    case Isa::kAvx512Bf16:
    case Isa::kAvx512:
#if defined(__x86_64__)
      if (d % 16 == 0) return {scores_avx512, pv_avx512};
#endif
      [[fallthrough]];
    case Isa::kAvx2:
#if defined(__x86_64__)
      if (d % 8 == 0) return {scores_avx2, pv_avx2};
#endif
      [[fallthrough]];
    case Isa::kScalar:
      return {scores_scalar, pv_scalar};
  }
  return {scores_scalar, pv_scalar};
}

// Queries of one (sequence, KV head, row chunk); their KV positions [kv_begin, kv_end) are
// covered by `parts` items, whose partials live at scratch + part * stride when parts > 1.
struct Group {
  int seq;
  int kv_head;
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
void gather_rows(const void* cache, const int32_t* table, int block_size, int64_t row_stride,
                 int64_t head_off, int j0, int n, int d, float* dst) {
  for (int j = 0; j < n; ++j) {
    const int pos = j0 + j;
    const int64_t row =
        static_cast<int64_t>(table[pos / block_size]) * block_size + pos % block_size;
    const int64_t src = row * row_stride + head_off;
    float* o = dst + j * d;
    if constexpr (C == DType::kF32) {
      std::memcpy(o, static_cast<const float*>(cache) + src, d * sizeof(float));
    } else {
      for (int t = 0; t < d; ++t) o[t] = load_f32<C>(cache, src + t);
    }
  }
}

template <DType C>
void run_item(const PagedAttentionArgs& a, const Group& g, const Item& it, const Kernels& kern,
              float* scratch) {
  const int d = a.head_dim;
  const int group_size = a.num_q_heads / a.num_kv_heads;
  const int q_begin = a.query_start_loc[g.seq];
  const int q_len = a.query_start_loc[g.seq + 1] - q_begin;
  const int ctx = a.seq_lens[g.seq];
  const int rows = g.row_end - g.row_begin;
  const int nq = rows * group_size;
  const int64_t q_stride = static_cast<int64_t>(a.num_q_heads) * d;
  const int32_t* table = a.block_tables + static_cast<int64_t>(g.seq) * a.max_blocks_per_seq;
  const int64_t row_stride = static_cast<int64_t>(a.num_kv_heads) * d;
  const int64_t head_off = static_cast<int64_t>(g.kv_head) * d;

  thread_local std::vector<float> buf;
  const size_t need = static_cast<size_t>(nq) * (2 * d + kTile + 4) + 2 * kTile * d;
  if (buf.size() < need) buf.resize(need);
  float* qs = buf.data();                          // [nq, d] scaled queries
  float* acc = qs + nq * d;                        // [nq, d]
  float* s = acc + nq * d;                         // [nq, kTile] scores, then probabilities
  float* m = s + nq * kTile;                       // [nq] running max
  float* l = m + nq;                               // [nq] running sum
  float* alpha = l + nq;                           // [nq] rescale factor of this tile
  int* pos = reinterpret_cast<int*>(alpha + nq);   // [nq] absolute position of the query
  float* kt = reinterpret_cast<float*>(pos + nq);  // [kTile, d]
  float* vt = kt + kTile * d;                      // [kTile, d]
  static_assert(sizeof(int) == sizeof(float));

  for (int r = 0; r < rows; ++r) {
    const int row = g.row_begin + r;
    for (int h = 0; h < group_size; ++h) {
      const int i = r * group_size + h;
      const float* src = a.q + (q_begin + row) * q_stride + (g.kv_head * group_size + h) * d;
      for (int t = 0; t < d; ++t) qs[i * d + t] = src[t] * a.scale;
      pos[i] = ctx - q_len + row;
      m[i] = kNegInf;
      l[i] = 0.0f;
    }
  }
  std::fill(acc, acc + nq * d, 0.0f);

  const int window = a.sliding_window;
  for (int j0 = it.kv_begin; j0 < it.kv_end; j0 += kTile) {
    const int nk = std::min(kTile, it.kv_end - j0);
    gather_rows<C>(a.k_cache, table, a.block_size, row_stride, head_off, j0, nk, d, kt);
    gather_rows<C>(a.v_cache, table, a.block_size, row_stride, head_off, j0, nk, d, vt);
    kern.scores(qs, nq, kt, nk, d, s, kTile);
    for (int i = 0; i < nq; ++i) {
      float* si = s + i * kTile;
      // Keys a query may see: (pos - window, pos], or [0, pos] without a window.
      const int hi = pos[i];
      const int lo = window > 0 ? hi - window + 1 : 0;
      float tile_max = kNegInf;
      for (int j = 0; j < nk; ++j) {
        const int key = j0 + j;
        if (key > hi || key < lo) si[j] = kNegInf;
        tile_max = std::max(tile_max, si[j]);
      }
      if (tile_max == kNegInf) {  // nothing visible in this tile
        alpha[i] = 1.0f;
        for (int j = 0; j < nk; ++j) si[j] = 0.0f;
        continue;
      }
      const float m_new = std::max(m[i], tile_max);
      alpha[i] = m[i] == kNegInf ? 0.0f : fast_exp(m[i] - m_new);
      float sum = 0.0f;
      for (int j = 0; j < nk; ++j) {
        const float p = si[j] == kNegInf ? 0.0f : fast_exp(si[j] - m_new);
        si[j] = p;
        sum += p;
      }
      l[i] = l[i] * alpha[i] + sum;
      m[i] = m_new;
    }
    kern.pv(s, kTile, nq, vt, nk, d, alpha, acc);
  }

  if (g.parts == 1) {
    for (int r = 0; r < rows; ++r)
      for (int h = 0; h < group_size; ++h) {
        const int i = r * group_size + h;
        float* dst =
            a.out + (q_begin + g.row_begin + r) * q_stride + (g.kv_head * group_size + h) * d;
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
  const int q_begin = a.query_start_loc[g.seq];
  const int nq = (g.row_end - g.row_begin) * group_size;
  const int64_t q_stride = static_cast<int64_t>(a.num_q_heads) * d;
  const int64_t part_stride = static_cast<int64_t>(nq) * (d + 2);
  for (int i = 0; i < nq; ++i) {
    const int r = i / group_size, h = i % group_size;
    float* dst = a.out + (q_begin + g.row_begin + r) * q_stride + (g.kv_head * group_size + h) * d;
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
  // Rows per item: enough queries to reuse each K/V tile, few enough to spread prefill.
  const int chunk_rows = std::clamp(32 / group_size, 1, 16);
  std::vector<Group> groups;
  for (int s = 0; s < a.num_seqs; ++s) {
    const int q_len = a.query_start_loc[s + 1] - a.query_start_loc[s];
    const int ctx = a.seq_lens[s];
    for (int r0 = 0; r0 < q_len; r0 += chunk_rows) {
      const int r1 = std::min(q_len, r0 + chunk_rows);
      const int first_pos = ctx - q_len + r0;
      const int last_pos = ctx - q_len + r1 - 1;
      const int kv_begin = a.sliding_window > 0 ? std::max(0, first_pos - a.sliding_window + 1) : 0;
      for (int h = 0; h < a.num_kv_heads; ++h)
        groups.push_back({s, h, r0, r1, kv_begin, last_pos + 1, 1, -1});
    }
  }
  if (groups.empty()) return;

  // Split long KV ranges when the groups alone cannot keep every thread busy.
  const int threads = omp_get_max_threads();
  const int64_t want = 4 * static_cast<int64_t>(threads);
  const int64_t num_groups = static_cast<int64_t>(groups.size());
  int64_t scratch_size = 0;
  if (threads > 1 && num_groups < want) {
    const int64_t per_group = (want + num_groups - 1) / num_groups;
    constexpr int kMinPartKeys = 8 * kTile;
    for (Group& g : groups) {
      const int keys = g.kv_end - g.kv_begin;
      // Short ranges stay whole (upper bound >= 1 keeps clamp well-defined).
      const int64_t max_parts = std::max<int64_t>(1, keys / kMinPartKeys);
      g.parts = static_cast<int>(std::clamp<int64_t>(per_group, 1, max_parts));
      if (g.parts > 1) {
        g.scratch = scratch_size;
        const int nq = (g.row_end - g.row_begin) * group_size;
        scratch_size += static_cast<int64_t>(g.parts) * nq * (a.head_dim + 2);
      }
    }
  }
  std::vector<Item> items;
  for (int gi = 0; gi < static_cast<int>(groups.size()); ++gi) {
    const Group& g = groups[gi];
    const int keys = g.kv_end - g.kv_begin;
    // Part boundaries on tile multiples, so only the last tile of a part is partial.
    const int per_part = (keys + g.parts - 1) / g.parts;
    const int step = (per_part + kTile - 1) / kTile * kTile;
    for (int p = 0; p < g.parts; ++p) {
      const int b = g.kv_begin + p * step;
      const int e = std::min(g.kv_end, b + step);
      items.push_back({gi, p, std::min(b, g.kv_end), e});
    }
  }
  std::vector<float> scratch(static_cast<size_t>(scratch_size));
  const Kernels kern = pick_kernels(a.head_dim);
  const int64_t num_items = static_cast<int64_t>(items.size());
#pragma omp parallel for schedule(dynamic, 1) if (num_items > 1)
  for (int64_t i = 0; i < num_items; ++i)
    run_item<C>(a, groups[items[i].group], items[i], kern, scratch.data());
  if (scratch_size > 0) {
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t gi = 0; gi < num_groups; ++gi)
      if (groups[gi].parts > 1) merge_group(a, groups[gi], scratch.data());
  }
}

template void paged_attention<DType::kF32>(const PagedAttentionArgs&);
template void paged_attention<DType::kBF16>(const PagedAttentionArgs&);

}  // namespace fastlm::cpu
