#pragma once
// Paged attention over the KV cache that rope_write_kv fills, for a batch of sequences each with
// some new query tokens (decode: 1; prefill / chunked prefill: many), or dense bidirectional
// attention for encoders (block_tables == nullptr: keys and values are the sequence's own rows).
//
//   q, out:   [num_tokens, num_q_heads, head_dim] (row strides q_stride, out_stride)
//   cache:    [num_blocks, block_size, num_kv_heads, head_dim]; key j of sequence s is at block
//             block_tables[s * max_blocks_per_seq + j / block_size], row j % block_size
//   sequence s: query rows [query_start_loc[s], query_start_loc[s + 1]), seq_lens[s] keys; its
//             query tokens are the last ones, so query row i sits at position
//             seq_lens[s] - q_len + i, and with `causal` sees keys (pos - sliding_window, pos]
//             (sliding_window <= 0: [0, pos]); without it, all seq_lens[s] keys.
// GQA/MQA: query head h reads kv head h / (num_q_heads / num_kv_heads). Softmax in float32.
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "fastlm_cuda/status.h"

namespace fastlm::cuda {

struct AttentionArgs {
  const void* q = nullptr;
  int64_t q_stride = 0;
  void* out = nullptr;
  int64_t out_stride = 0;
  // Paged keys/values.
  const void* k_cache = nullptr;
  const void* v_cache = nullptr;
  const int32_t* block_tables = nullptr;
  int max_blocks_per_seq = 0;
  int block_size = 0;
  // Dense keys/values (encoders; used when block_tables is null): rows like q's.
  const void* k = nullptr;
  const void* v = nullptr;
  int64_t kv_stride = 0;

  int num_tokens = 0;
  int num_seqs = 0;
  const int32_t* query_start_loc = nullptr;  // [num_seqs + 1], device
  const int32_t* seq_lens = nullptr;         // [num_seqs], device; dense: null (= query lengths)
  int max_query_len = 0;                     // host-side bounds, for the launch shape
  int max_seq_len = 0;
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  float scale = 1.0f;
  int sliding_window = 0;
  bool causal = true;
  // Split-KV partial results (flash-decoding); null or too small: one split per query.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  // > 0: exactly this many KV splits (a CUDA graph needs a launch shape that does not depend on
  // max_seq_len; the workspace must hold them, else kInvalidArgument). 0: chosen per call.
  int num_splits = 0;
};

// Workspace that lets the split-KV kernel use as many splits as it wants for this shape.
size_t attention_workspace_bytes(int num_tokens, int num_q_heads, int head_dim, int max_seq_len);

// Picks a kernel: tensor-core tiles (FlashAttention-2 style, wmma) for f16/bf16 batches with a
// query longer than one token and head_dim 32/64/128, else the split-KV kernel.
Status attention(DType dtype, const AttentionArgs& args, cudaStream_t stream);
// One CTA per (query token, query head, KV split), warps over keys, then a combine pass
// (flash-decoding). Any dtype, head_dim 32/64/128/256.
Status attention_split_kv(DType dtype, const AttentionArgs& args, cudaStream_t stream);
// 64 query rows x 32-64 keys per tile on tensor cores (wmma m16n16k16, f32 accumulate),
// online softmax. f16/bf16, head_dim 32/64/128.
Status attention_tiled(DType dtype, const AttentionArgs& args, cudaStream_t stream);

}  // namespace fastlm::cuda
