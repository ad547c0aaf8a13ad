#include "cpu/cross_attention_cpu.h"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "cpu/cpu_common.h"
#include "cpu/simd.h"

// One work item = one query row x one head: scores against every key (4 keys per step, their
// dot products reduced together), a softmax over the whole row (the keys are all known, so no
// online rescaling), then P V accumulated in registers across the head dims. Each row's result
// depends only on that row, whatever else shares the call (batch invariance).

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

template <typename T>
void attend_portable(const float* q, const Rows<T>& r, int n, int d, float scale, float* s,
                     float* out) {
  float m = -INFINITY;
  for (int j = 0; j < n; ++j) {
    const T* kj = r.key(r.k, j);
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
    const T* vj = r.key(r.v, j);
    for (int t = 0; t < d; ++t) out[t] += s[j] * to_f32(vj[t]);
  }
  const float inv = 1.0f / sum;
  for (int t = 0; t < d; ++t) out[t] *= inv;
}

#if defined(__x86_64__)
// AVX2, d a multiple of 8 and at most 64 (all of Whisper's heads are 64 wide).
template <typename T>
void attend_avx2(const float* q, const Rows<T>& r, int n, int d, float scale, float* s,
                 float* out) {
  const int nv = d / 8;
  __m256 qv[8];
  for (int c = 0; c < nv; ++c) qv[c] = _mm256_loadu_ps(q + 8 * c);
  const __m128 sc = _mm_set1_ps(scale);
  int j = 0;
  for (; j + 4 <= n; j += 4) {
    const T* k0 = r.key(r.k, j);
    const T* k1 = r.key(r.k, j + 1);
    const T* k2 = r.key(r.k, j + 2);
    const T* k3 = r.key(r.k, j + 3);
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
    const T* kj = r.key(r.k, j);
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
    const T* vk = r.key(r.v, k);
    const __m256 p = _mm256_broadcast_ss(s + k);
    for (int c = 0; c < nv; ++c) acc[c] = _mm256_fmadd_ps(p, simd::load8(vk + 8 * c), acc[c]);
  }
  const __m256 inv = _mm256_set1_ps(1.0f / sum);
  for (int c = 0; c < nv; ++c) _mm256_storeu_ps(out + 8 * c, _mm256_mul_ps(acc[c], inv));
}
#endif

}  // namespace

template <DType C>
void cross_attention(const CrossAttentionArgs& a) {
  using T = std::conditional_t<C == DType::kBF16, uint16_t, float>;
  const int H = a.num_heads, D = a.head_dim;
  const int64_t hd = static_cast<int64_t>(H) * D;
  const int64_t items = static_cast<int64_t>(a.num_rows) * H;
  [[maybe_unused]] const bool vector = D % 8 == 0 && D <= 64;
#pragma omp parallel if (items * a.num_keys * D >= kParallelMinElems * 16)
  {
    std::vector<float> s(static_cast<size_t>(a.num_keys));
#pragma omp for schedule(static)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t row = item / H;
      const int h = static_cast<int>(item % H);
      const Rows<T> r{static_cast<const T*>(a.k_cache),
                      static_cast<const T*>(a.v_cache),
                      a.block_tables + row * a.blocks_per_row,
                      a.block_size,
                      hd,
                      static_cast<int64_t>(h) * D};
      const float* q = a.q + row * hd + static_cast<int64_t>(h) * D;
      float* out = a.out + row * hd + static_cast<int64_t>(h) * D;
#if defined(__x86_64__)
      if (vector) {
        attend_avx2(q, r, a.num_keys, D, a.scale, s.data(), out);
        continue;
      }
#endif
      attend_portable(q, r, a.num_keys, D, a.scale, s.data(), out);
    }
  }
}

template void cross_attention<DType::kF32>(const CrossAttentionArgs&);
template void cross_attention<DType::kBF16>(const CrossAttentionArgs&);

}  // namespace fastlm::cpu
