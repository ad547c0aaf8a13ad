#include "cpu/encoder_attention_cpu.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/cpu_common.h"

// One work item = one sequence x one head: K is gathered transposed ([D, L]) and V contiguous
// ([L, D]) into per-thread buffers, so both the score loop (over keys) and the P V loop (over
// head dims) are unit-stride and vectorize. Encoder sequences are short (<= 512 tokens), so the
// L x L score row fits in L1 and no online softmax is needed.

namespace fastlm::cpu {

void encoder_attention(const float* qkv, const int32_t* query_start_loc, int num_seqs,
                       int num_heads, int head_dim, float scale, float* out) {
  const int64_t hd = static_cast<int64_t>(num_heads) * head_dim;
  const int64_t ld = 3 * hd;  // qkv row stride
  const int64_t items = static_cast<int64_t>(num_seqs) * num_heads;
  const int64_t total_tokens = query_start_loc[num_seqs];
#pragma omp parallel if (total_tokens * hd >= kParallelMinElems)
  {
    std::vector<float> kt, v, s, acc(head_dim);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      const int seq = static_cast<int>(item / num_heads);
      const int h = static_cast<int>(item % num_heads);
      const int64_t row0 = query_start_loc[seq];
      const int64_t len = query_start_loc[seq + 1] - row0;
      if (len <= 0) continue;
      kt.resize(static_cast<size_t>(head_dim * len));
      v.resize(static_cast<size_t>(len * head_dim));
      s.resize(static_cast<size_t>(len));
      for (int64_t j = 0; j < len; ++j) {
        const float* row = qkv + (row0 + j) * ld;
        const float* kj = row + hd + static_cast<int64_t>(h) * head_dim;
        const float* vj = row + 2 * hd + static_cast<int64_t>(h) * head_dim;
        for (int t = 0; t < head_dim; ++t) kt[t * len + j] = kj[t];
        std::copy(vj, vj + head_dim, v.data() + j * head_dim);
      }
      for (int64_t i = 0; i < len; ++i) {
        const float* qi = qkv + (row0 + i) * ld + static_cast<int64_t>(h) * head_dim;
        float* si = s.data();
        std::fill(si, si + len, 0.0f);
        for (int t = 0; t < head_dim; ++t) {
          const float qt = qi[t] * scale;
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
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t j = 0; j < len; ++j) {
          const float p = si[j];
          const float* vr = v.data() + j * head_dim;
          for (int t = 0; t < head_dim; ++t) acc[t] += p * vr[t];
        }
        float* o = out + (row0 + i) * hd + static_cast<int64_t>(h) * head_dim;
        for (int t = 0; t < head_dim; ++t) o[t] = acc[t] * inv;
      }
    }
  }
}

}  // namespace fastlm::cpu
