#pragma once
// The op entry points. Each op validates shapes/dtypes, then dispatches once on device x dtype
// to a typed body in cpp/cpu/ (or cuda/). Activations are float32; weights may be float32 or
// bfloat16; KV caches float32 or bfloat16. All CPU bodies are threaded with OpenMP.
#include <cstdint>

#include "core/qtype.h"
#include "core/tensor.h"

namespace fastlm::ops {

// y[M,N] = x[M,K] @ w[N,K]^T (+ bias[N]). x, y float32; w float32 or bfloat16 (HF layout,
// out_features x in_features); bias float32 or null. bf16 weights multiply x rounded to bf16
// with float32 accumulation (as torch does for bf16 matmuls).
void linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y);

enum class Activation : uint8_t { kNone, kGeluErf, kGeluTanh };

// y = act(x @ w^T + bias) with x and y each float32 or bfloat16 (y rounded after the
// activation). Where oneDNN runs the matmul, the activation and the rounding are fused into it,
// so an encoder MLP's intermediate goes from up-projection to down-projection as bf16 without
// separate GELU and conversion passes; elsewhere the same result is composed from linear, gelu
// and conversions.
void linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y, Activation act);

// linear with a Weight operand (core/qtype.h): dense weights as above; packed blocks run the
// quantized GEMM (cpu/qgemm_cpu.h: activations quantized to int8 per 32-block, integer dot
// products, a fixed per-row order whatever M is). x, y float32.
void linear(const Tensor& x, const Weight& w, const Tensor* bias, Tensor& y);

// y = x / sqrt(mean(x^2) + eps) * w, per row. x, y [M,H] float32 (y may alias x); w [H] any
// float dtype.
void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& y);

// residual += x; y = rms_norm(residual). Fused: one pass over memory.
void add_rms_norm(Tensor& residual, const Tensor& x, const Tensor& w, float eps, Tensor& y);

// Rotary embedding in place, HF "rotate_half" (NeoX) layout: the first half of each head's
// rotary dims pairs with the second half. q [T, Hq*D], k [T, Hk*D] float32;
// positions[T]; cos_sin [max_pos, D] float32 holds cos in [:, :D/2], sin in [:, D/2:].
void rope(Tensor& q, Tensor& k, const int32_t* positions, const Tensor& cos_sin, int head_dim);

// out[M,I] = silu(gate_up[M, :I]) * gate_up[M, I:]. float32.
void silu_mul(const Tensor& gate_up, Tensor& out);

// out[n,H] float32 = table[ids[i]] (table [V,H] any float dtype).
void embedding(const Tensor& table, const int32_t* ids, int64_t n, Tensor& out);
// The same from a Weight: a packed table dequantizes only the gathered rows.
void embedding(const Weight& table, const int32_t* ids, int64_t n, Tensor& out);

// Writes token i's k/v ([T, Hk*D] float32) into cache slot slot_mapping[i] (slot = block *
// block_size + offset; negative = skip). Caches [num_blocks, block_size, Hk, D], f32 or bf16.
void write_kv(const Tensor& k, const Tensor& v, Tensor& k_cache, Tensor& v_cache,
              const int64_t* slot_mapping);

// Paged causal attention over a flat batch of num_seqs sequences.
//   q [T, Hq*D] float32; out [T, Hq*D] float32.
//   query_start_loc[num_seqs+1]: rows of q belonging to each sequence.
//   seq_lens[num_seqs]: total context length of each sequence after this step (its new tokens
//     are the last query_len positions of that context; their K/V are already in the cache).
//   block_tables [num_seqs, max_blocks_per_seq] int32 block ids.
//   sliding_window: > 0 limits each query to the last `sliding_window` positions (itself
//     included), as HF does.
// GQA: query head h reads kv head h / (Hq / Hk).
struct AttentionBatch {
  int num_seqs = 0;
  const int32_t* query_start_loc = nullptr;
  const int32_t* seq_lens = nullptr;
  const int32_t* block_tables = nullptr;
  int max_blocks_per_seq = 0;
  int block_size = 16;
};
void paged_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                     const AttentionBatch& batch, int num_q_heads, int num_kv_heads, int head_dim,
                     float scale, int sliding_window, Tensor& out);

// y = x + b per row (b [N] any float dtype), in place on x [M,N] float32.
void add_bias(Tensor& x, const Tensor& b);

// In-place RMSNorm over each head_dim-sized chunk of x [T, H*D] (Qwen3 q/k norm); w [D].
void head_rms_norm(Tensor& x, const Tensor& w, int head_dim, float eps);

}  // namespace fastlm::ops

// ---- encoder (BERT family) ops ----
namespace fastlm::ops {

// y = (x - mean) / sqrt(var + eps) * w + b per row. x, y [M,H] float32 (y may alias x); w, b [H]
// of one float dtype.
void layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, float eps, Tensor& y);

// residual = layer_norm(residual + x), in place (post-norm residual blocks).
void add_layer_norm(Tensor& residual, const Tensor& x, const Tensor& w, const Tensor& b, float eps);

// In place GELU on a float32 tensor: 0.5 x (1 + erf(x / sqrt 2)), or with tanh_approximation
// HF's "gelu_new" / "gelu_pytorch_tanh".
void gelu(Tensor& x, bool tanh_approximation = false);

// Bidirectional (non-causal) attention of each sequence's tokens over themselves, without a KV
// cache. qkv [T, 3*Hn*D] float32 rows [q | k | v]; out [T, Hn*D] float32;
// query_start_loc[num_seqs + 1] gives each sequence's rows.
void encoder_attention(const Tensor& qkv, const int32_t* query_start_loc, int num_seqs,
                       int num_heads, int head_dim, float scale, Tensor& out);

}  // namespace fastlm::ops
