#pragma once
// The op entry points. Every op takes the ExecContext first (its device, stream, workspace and
// backend; core/exec_context.h); every tensor argument must live on ctx.device. Entry points
// check shapes, dtypes and devices only (O(1), never reading tensor data); index arrays (token
// ids, positions, slot mapping, block tables, query_start_loc) are int tensors validated once
// where the host builds the batch (ops/batch_checks.h). Each op then dispatches once on
// device x activation dtype x weight dtype (ops/dispatch.h) to a typed body in cpp/cpu/ (or
// cuda/). Activations are float32; weights may be float32 or bfloat16; KV caches float32 or
// bfloat16. All CPU bodies are threaded with OpenMP.
#include <cstdint>

#include "core/activation.h"
#include "core/exec_context.h"
#include "core/qtype.h"
#include "core/tensor.h"

namespace fastlm::ops {

using fastlm::Activation;  // core/activation.h

// y[M,N] = x[M,K] @ w[N,K]^T (+ bias[N]). x, y float32; w float32 or bfloat16 (HF layout,
// out_features x in_features); bias float32 or null. bf16 weights multiply x rounded to bf16
// with float32 accumulation (as torch does for bf16 matmuls).
void linear(ExecContext& ctx, const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y);

// y = act(x @ w^T + bias) with x and y each float32 or bfloat16 (y rounded after the
// activation). Where oneDNN runs the matmul, the activation and the rounding are fused into it,
// so an encoder MLP's intermediate goes from up-projection to down-projection as bf16 without
// separate GELU and conversion passes; elsewhere the same result is composed from linear, gelu
// and conversions.
void linear(ExecContext& ctx, const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y,
            Activation act);

// linear(ctx, x, w, bias, y, act) for rows whose count is fixed by the model, not by the batch:
// one request's encoder frames (Whisper: 1500 per request), one call per request. Each call's
// result then depends on that request alone, so the large-M library matmul (oneDNN: faster than
// the canonical GEMM at these shapes; bf16 weights without native bf16 matmuls widened to f32 in
// slices) runs even in batch-invariant mode. Other devices: the same as linear(..., act).
void linear_per_request(ExecContext& ctx, const Tensor& x, const Tensor& w, const Tensor* bias,
                        Tensor& y, Activation act = Activation::kNone);

// linear with a Weight operand (core/qtype.h): dense weights as above; packed blocks run the
// quantized GEMM (cpu/qgemm_cpu.h: activations quantized to int8 per half block, integer dot
// products, a fixed per-row order whatever M is). x, y float32.
void linear(ExecContext& ctx, const Tensor& x, const Weight& w, const Tensor* bias, Tensor& y);

// y = x / sqrt(mean(x^2) + eps) * w, per row. x, y [M,H] float32 (y may alias x); w [H] any
// float dtype.
void rms_norm(ExecContext& ctx, const Tensor& x, const Tensor& w, float eps, Tensor& y);

// residual += x; y = rms_norm(residual). Fused: one pass over memory.
void add_rms_norm(ExecContext& ctx, Tensor& residual, const Tensor& x, const Tensor& w, float eps,
                  Tensor& y);

// Rotary embedding in place, HF "rotate_half" (NeoX) layout: the first half of each head's
// rotary dims pairs with the second half. q [T, Hq*D], k [T, Hk*D] float32;
// positions [T] int32 (each in [0, max_pos)); cos_sin [max_pos, R] float32 holds cos in
// [:, :R/2], sin in [:, R/2:] (R <= D: partial rotary).
void rope(ExecContext& ctx, Tensor& q, Tensor& k, const Tensor& positions, const Tensor& cos_sin,
          int head_dim);

// out[M,I] = silu(gate_up[M, :I]) * gate_up[M, I:]. float32.
void silu_mul(ExecContext& ctx, const Tensor& gate_up, Tensor& out);

// out[n,H] float32 = table[ids[i]] (table [V,H] any float dtype; ids [n] int32 in [0, V)).
void embedding(ExecContext& ctx, const Tensor& table, const Tensor& ids, Tensor& out);
// The same from a Weight: a packed table dequantizes only the gathered rows.
void embedding(ExecContext& ctx, const Weight& table, const Tensor& ids, Tensor& out);

// Writes token i's k/v ([T, Hk*D] float32) into cache slot slot_mapping[i] (slot_mapping [T]
// int64; slot = block * block_size + offset < num_blocks * block_size; negative = skip).
// Caches [num_blocks, block_size, Hk, D], f32 or bf16.
void write_kv(ExecContext& ctx, const Tensor& k, const Tensor& v, Tensor& k_cache, Tensor& v_cache,
              const Tensor& slot_mapping);

// Paged causal attention over a flat batch of num_seqs sequences (int32 tensors on ctx.device):
//   query_start_loc [num_seqs+1]: rows of q belonging to each sequence (0 .. T).
//   seq_lens [num_seqs]: total context length of each sequence after this step (its new tokens
//     are the last query_len positions of that context; their K/V are already in the cache).
//   block_tables [num_seqs, max_blocks_per_seq] block ids (in [0, num_blocks) for every block
//     a sequence's context covers).
// q [T, Hq*D] float32; out [T, Hq*D] float32. sliding_window > 0 limits each query to the last
// `sliding_window` positions (itself included), as HF does. GQA: query head h reads kv head
// h / (Hq / Hk).
struct AttentionBatch {
  Tensor query_start_loc;
  Tensor seq_lens;
  Tensor block_tables;
  int block_size = 16;
  int num_seqs() const { return static_cast<int>(seq_lens.defined() ? seq_lens.size(0) : 0); }
};
void paged_attention(ExecContext& ctx, const Tensor& q, const Tensor& k_cache,
                     const Tensor& v_cache, const AttentionBatch& batch, int num_q_heads,
                     int num_kv_heads, int head_dim, float scale, int sliding_window, Tensor& out);

// Non-causal attention of each query row over a fixed set of cached keys (encoder-decoder
// cross-attention): row i attends to slots [0, num_keys) of its own block table
// block_tables[i] ([T, blocks_per_row] int32, validated by the host). q, out [T, H*D] float32;
// caches [num_blocks, block_size, H, D] f32 or bf16. A row's result depends only on that row.
void cross_attention(ExecContext& ctx, const Tensor& q, const Tensor& k_cache,
                     const Tensor& v_cache, const Tensor& block_tables, int num_keys, int num_heads,
                     int head_dim, float scale, Tensor& out);

// y = x + b per row (b [N] any float dtype), in place on x [M,N] float32.
void add_bias(ExecContext& ctx, Tensor& x, const Tensor& b);

// In-place RMSNorm over each head_dim-sized chunk of x [T, H*D] (Qwen3 q/k norm); w [D].
void head_rms_norm(ExecContext& ctx, Tensor& x, const Tensor& w, int head_dim, float eps);

// ---- data movement (ops/copy.cc) ----

// dst [T, n] = src[:, col : col + n] (float32): q / k / v out of a fused projection.
void copy_columns(ExecContext& ctx, const Tensor& src, int64_t col, Tensor& dst);

// dst[i] = src[indices[i]] (rows of any dtype; indices [n] int32, validated by the host).
void gather_rows(ExecContext& ctx, const Tensor& src, const Tensor& indices, Tensor& dst);

// x += y elementwise (float32, one shape).
void add(ExecContext& ctx, Tensor& x, const Tensor& y);

// RoBERTa position ids (create_position_ids_from_input_ids): per sequence, non-pad tokens count
// from pad_token_id + 1 and pad tokens sit at pad_token_id. All int32 [T] / [num_seqs + 1].
void roberta_positions(ExecContext& ctx, const Tensor& token_ids, const Tensor& query_start_loc,
                       int32_t pad_token_id, Tensor& positions);

}  // namespace fastlm::ops

// ---- encoder (BERT family) ops ----
namespace fastlm::ops {

// y = (x - mean) / sqrt(var + eps) * w + b per row. x, y [M,H] float32 (y may alias x); w, b [H]
// of one float dtype.
void layer_norm(ExecContext& ctx, const Tensor& x, const Tensor& w, const Tensor& b, float eps,
                Tensor& y);

// residual = layer_norm(residual + x), in place (post-norm residual blocks).
void add_layer_norm(ExecContext& ctx, Tensor& residual, const Tensor& x, const Tensor& w,
                    const Tensor& b, float eps);

// In place GELU on a float32 tensor: 0.5 x (1 + erf(x / sqrt 2)), or with tanh_approximation
// HF's "gelu_new" / "gelu_pytorch_tanh".
void gelu(ExecContext& ctx, Tensor& x, bool tanh_approximation = false);

// Bidirectional (non-causal) attention of each sequence's tokens over themselves, without a KV
// cache. qkv [T, 3*Hn*D] float32 rows [q | k | v]; out [T, Hn*D] float32;
// query_start_loc [num_seqs + 1] int32 gives each sequence's rows (non-decreasing, 0 .. T).
void encoder_attention(ExecContext& ctx, const Tensor& qkv, const Tensor& query_start_loc,
                       int num_heads, int head_dim, float scale, Tensor& out);

}  // namespace fastlm::ops
