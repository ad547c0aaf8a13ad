#include "cpu/cross_attention_cpu.h"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "cpu/cpu_common.h"
#include "cpu/simd.h"

// Flash-decoding: a row's keys are cut into fixed chunks of kChunkKeys. One work item = one
// query row x one chunk, every head: the chunk's slots are read once from memory (a slot holds
// all heads' K or V contiguously), each head's scores against them come out 4 keys per step (dot
// products reduced together), then a softmax local to the chunk (max m, sum l) and the chunk's
// P V. A second pass combines a row's chunks in chunk order (rescaled by exp(m_c - max)). The
// chunking depends on num_keys only, so each row's result depends only on that row, whatever
// else shares the call or how many threads run it (batch invariance).

namespace fastlm::cpu {
namespace {

template <typename T>
float to_f32(T v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
    return bf16_to_f32(v);
  }
}

template <typename T>
struct Rows {
  const T* k;
  const T* v;
  const int32_t* table;
  int block_size;
  int64_t slot_stride;  // H * D
  int64_t head_off;     // h * D
  const T* key(const T* cache, int j) const {
    const int64_t slot = static_cast<int64_t>(table[j / block_size]) * block_size + j % block_size;
    return cache + slot * slot_stride + head_off;
  }
};

constexpr int kChunkKeys = 128;

// A chunk's partial result for one head: acc = sum_j exp(s_j - m) v_j, l = sum_j exp(s_j - m).
struct Partial {
  float m, l;
};

// Keys [j0, j0 + n) of one head: scores into s, then out[0, d) = sum_j exp(s_j - m) v_j.
template <typename T>
Partial attend_portable(const float* q, const Rows<T>& r, int j0, int n, int d, float scale,
                        float* s, float* out) {
  float m = -INFINITY;
  for (int j = 0; j < n; ++j) {
    const T* kj = r.key(r.k, j0 + j);
    float acc = 0.0f;
    for (int t = 0; t < d; ++t) acc += q[t] * to_f32(kj[t]);
    s[j] = acc * scale;
    m = std::max(m, s[j]);
  }
  float sum = 0.0f;
  for (int j = 0; j < n; ++j) {
    s[j] = fast_exp(s[j] - m);
    sum += s[j];
  }
  std::fill(out, out + d, 0.0f);
  for (int j = 0; j < n; ++j) {
    const T* vj = r.key(r.v, j0 + j);
    for (int t = 0; t < d; ++t) out[t] += s[j] * to_f32(vj[t]);
  }
  return {m, sum};
}

#if defined(__x86_64__)
// AVX2, d a multiple of 8 and at most 64 (all of Whisper's heads are 64 wide).
template <typename T>
Partial attend_avx2(const float* q, const Rows<T>& r, int j0, int n, int d, float scale, float* s,
                    float* out) {
  const int nv = d / 8;
  __m256 qv[8];
  for (int c = 0; c < nv; ++c) qv[c] = _mm256_loadu_ps(q + 8 * c);
  const __m128 sc = _mm_set1_ps(scale);
  int j = 0;
  for (; j + 4 <= n; j += 4) {
    const T* k0 = r.key(r.k, j0 + j);
    const T* k1 = r.key(r.k, j0 + j + 1);
    const T* k2 = r.key(r.k, j0 + j + 2);
    const T* k3 = r.key(r.k, j0 + j + 3);
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int c = 0; c < nv; ++c) {
      a0 = _mm256_fmadd_ps(qv[c], simd::load8(k0 + 8 * c), a0);
      a1 = _mm256_fmadd_ps(qv[c], simd::load8(k1 + 8 * c), a1);
      a2 = _mm256_fmadd_ps(qv[c], simd::load8(k2 + 8 * c), a2);
      a3 = _mm256_fmadd_ps(qv[c], simd::load8(k3 + 8 * c), a3);
    }
    _mm_storeu_ps(s + j, _mm_mul_ps(simd::hsum8x4(a0, a1, a2, a3), sc));
  }
  for (; j < n; ++j) {
    const T* kj = r.key(r.k, j0 + j);
    __m256 a = _mm256_setzero_ps();
    for (int c = 0; c < nv; ++c) a = _mm256_fmadd_ps(qv[c], simd::load8(kj + 8 * c), a);
    s[j] = simd::hsum8(a) * scale;
  }
  float m = -INFINITY;
  for (int i = 0; i < n; ++i) m = std::max(m, s[i]);
  const __m256 mv = _mm256_set1_ps(m);
  __m256 sum8 = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = simd::exp8(_mm256_sub_ps(_mm256_loadu_ps(s + i), mv));
    _mm256_storeu_ps(s + i, e);
    sum8 = _mm256_add_ps(sum8, e);
  }
  float sum = simd::hsum8(sum8);
  for (; i < n; ++i) {
    s[i] = fast_exp(s[i] - m);
    sum += s[i];
  }
  __m256 acc[8];
  for (int c = 0; c < nv; ++c) acc[c] = _mm256_setzero_ps();
  for (int k = 0; k < n; ++k) {
    const T* vk = r.key(r.v, j0 + k);
    const __m256 p = _mm256_broadcast_ss(s + k);
    for (int c = 0; c < nv; ++c) acc[c] = _mm256_fmadd_ps(p, simd::load8(vk + 8 * c), acc[c]);
  }
  for (int c = 0; c < nv; ++c) _mm256_storeu_ps(out + 8 * c, acc[c]);
  return {m, sum};
}
#endif

}  // namespace

template <DType C>
void cross_attention(const CrossAttentionArgs& a) {
  using T = std::conditional_t<C == DType::kBF16, uint16_t, float>;
  const int H = a.num_heads, D = a.head_dim;
  const int64_t hd = static_cast<int64_t>(H) * D;
  const int chunks = (a.num_keys + kChunkKeys - 1) / kChunkKeys;
  const int64_t items = static_cast<int64_t>(a.num_rows) * chunks;
  [[maybe_unused]] const bool vector = D % 8 == 0 && D <= 64;
  // Per (row, chunk): H partial outputs [D] and H (m, l) pairs.
  thread_local std::vector<float> acc_buf;
  thread_local std::vector<Partial> part_buf;
  acc_buf.resize(static_cast<size_t>(items * hd));
  part_buf.resize(static_cast<size_t>(items * H));
  // Through plain pointers: inside the parallel region a thread_local names each thread's copy.
  float* const acc = acc_buf.data();
  Partial* const part = part_buf.data();
#pragma omp parallel if (static_cast<int64_t>(a.num_rows) * a.num_keys * hd >= \
                             kParallelMinElems * 16)
  {
    float s[kChunkKeys];
#pragma omp for schedule(static)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t row = item / chunks;
      const int j0 = static_cast<int>(item % chunks) * kChunkKeys;
      const int n = std::min(kChunkKeys, a.num_keys - j0);
      for (int h = 0; h < H; ++h) {
        const Rows<T> r{static_cast<const T*>(a.k_cache),
                        static_cast<const T*>(a.v_cache),
                        a.block_tables + row * a.blocks_per_row,
                        a.block_size,
                        hd,
                        static_cast<int64_t>(h) * D};
        const float* q = a.q + row * hd + static_cast<int64_t>(h) * D;
        float* out = acc + item * hd + static_cast<int64_t>(h) * D;
#if defined(__x86_64__)
        if (vector) {
          part[item * H + h] = attend_avx2(q, r, j0, n, D, a.scale, s, out);
          continue;
        }
#endif
        part[item * H + h] = attend_portable(q, r, j0, n, D, a.scale, s, out);
      }
    }
    // Combine each (row, head) over its chunks, in chunk order.
#pragma omp for schedule(static)
    for (int64_t rh = 0; rh < static_cast<int64_t>(a.num_rows) * H; ++rh) {
      const int64_t row = rh / H;
      const int h = static_cast<int>(rh % H);
      const int64_t first = row * chunks;
      float m = -INFINITY;
      for (int c = 0; c < chunks; ++c) m = std::max(m, part[(first + c) * H + h].m);
      float* out = a.out + row * hd + static_cast<int64_t>(h) * D;
      std::fill(out, out + D, 0.0f);
      float l = 0.0f;
      for (int c = 0; c < chunks; ++c) {
        const Partial& p = part[(first + c) * H + h];
        const float w = fast_exp(p.m - m);
        l += w * p.l;
        const float* src = acc + (first + c) * hd + static_cast<int64_t>(h) * D;
        for (int t = 0; t < D; ++t) out[t] += w * src[t];
      }
      const float inv = 1.0f / l;
      for (int t = 0; t < D; ++t) out[t] *= inv;
    }
  }
}

template void cross_attention<DType::kF32>(const CrossAttentionArgs&);
template void cross_attention<DType::kBF16>(const CrossAttentionArgs&);

}  // namespace fastlm::cpu
