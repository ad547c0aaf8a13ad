#pragma once
// Elementwise, normalization, RoPE + KV-cache write, gather and pooling kernels. Raw device
// pointers, sizes and a stream; each returns a Status (the message: last_error_message()).
// Shapes are row-major; `*_stride` arguments are in elements between consecutive rows, so a
// kernel can read q/k/v as views of the fused QKV projection. All operands of a call share
// `dtype`; statistics accumulate in float32. Index arrays are validated when the host builds the
// batch: kernels trust them (an out-of-range id would read out of bounds), except where noted.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "fastlm_cuda/status.h"

namespace fastlm::cuda {

// y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w.   x, y: [rows, hidden] (y may alias x).
Status rms_norm(DType dtype, const void* x, int64_t x_stride, const void* w, float eps, void* y,
                int64_t rows, int64_t hidden, cudaStream_t stream);
// residual += x; y = rms_norm(residual) * w (the pre-norm residual stream of decoder layers).
Status add_rms_norm(DType dtype, void* residual, const void* x, const void* w, float eps, void* y,
                    int64_t rows, int64_t hidden, cudaStream_t stream);
// In place over each head of x viewed [rows, heads, head_dim] with row stride (Qwen3's q/k norm;
// w: [head_dim]).
Status head_rms_norm(DType dtype, void* x, int64_t x_stride, int heads, int head_dim, const void* w,
                     float eps, int64_t rows, cudaStream_t stream);
// y = (x - mean) / sqrt(var + eps) * w + b (b may be null). residual, when not null, is added
// to x first, rounded to dtype (BERT's post-norm: LayerNorm(x + residual)). y may alias x.
Status layer_norm(DType dtype, const void* x, const void* residual, const void* w, const void* b,
                  float eps, void* y, int64_t rows, int64_t hidden, cudaStream_t stream);

// NeoX-style rotary embedding on the first rot_dim dims of every q and k head, in place, then
// the rotated k and v written into the paged cache at slot_mapping[t] (slot < 0: not written).
//   q: [tokens, q_heads, head_dim] (row stride q_stride), k, v: [tokens, kv_heads, head_dim]
//   cos_sin: float32 [max_position, rot_dim], cos in [:rot_dim/2], sin in [rot_dim/2:]
//            (model::RopeCache: default/linear/llama3/yarn all reduce to this table)
//   k_cache, v_cache: [num_blocks, block_size, kv_heads, head_dim], slot = block * block_size +
//            offset; null: no cache write (q may be null too: rotates k alone).
struct RopeKvArgs {
  void* q = nullptr;
  int64_t q_stride = 0;
  int num_q_heads = 0;
  void* k = nullptr;
  int64_t k_stride = 0;
  const void* v = nullptr;
  int64_t v_stride = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int rot_dim = 0;
  const int32_t* positions = nullptr;
  const float* cos_sin = nullptr;
  void* k_cache = nullptr;
  void* v_cache = nullptr;
  const int64_t* slot_mapping = nullptr;
  int64_t tokens = 0;
};
Status rope_write_kv(DType dtype, const RopeKvArgs& args, cudaStream_t stream);

// out[m, i] = silu(gate_up[m, i]) * gate_up[m, inter + i];  gate_up: [m, 2 * inter].
Status silu_mul(DType dtype, const void* gate_up, void* out, int64_t m, int64_t inter,
                cudaStream_t stream);
// In place over n values: 0.5 x (1 + erf(x / sqrt 2)), or the tanh approximation.
Status gelu(DType dtype, void* x, int64_t n, bool tanh_approximation, cudaStream_t stream);
// x[m, n] += bias[n].
Status add_bias(DType dtype, void* x, const void* bias, int64_t m, int64_t n, cudaStream_t stream);
// out[i] = table[ids[i]];  table [vocab, hidden]. An id outside [0, vocab) gives a zero row.
Status embedding(DType dtype, const void* table, int64_t vocab, const int32_t* ids, void* out,
                 int64_t n, int64_t hidden, cudaStream_t stream);
// out[i] = x[rows[i]] (the logits rows of a batch: each sequence's last token).
Status gather_rows(DType dtype, const void* x, int64_t x_stride, const int32_t* rows, void* out,
                   int64_t n, int64_t hidden, cudaStream_t stream);

enum class PoolingType { kLast, kMean, kCls };
// out[s] (float32 [num_seqs, hidden]) = pooled hidden states of sequence s, whose rows are
// [query_start_loc[s], query_start_loc[s + 1]); L2-normalized when `normalize`.
Status pool(DType dtype, const void* hidden_states, const int32_t* query_start_loc, int num_seqs,
            int64_t hidden, PoolingType type, bool normalize, float* out, cudaStream_t stream);

}  // namespace fastlm::cuda
