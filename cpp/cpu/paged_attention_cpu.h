#pragma once
// Typed body of ops::paged_attention. C is the KV cache dtype (f32 or bf16). Arguments are
// validated by the entry point (cpp/ops/paged_attention.cc).
#include <cstdint>

#include "core/dtype.h"

namespace fastlm::cpu {

struct PagedAttentionArgs {
  const float* q = nullptr;       // [T, Hq*D]
  const void* k_cache = nullptr;  // [num_blocks, block_size, Hk, D]
  const void* v_cache = nullptr;
  float* out = nullptr;  // [T, Hq*D]
  int num_seqs = 0;
  const int32_t* query_start_loc = nullptr;  // [num_seqs + 1]
  const int32_t* seq_lens = nullptr;         // [num_seqs]
  const int32_t* block_tables = nullptr;     // [num_seqs, max_blocks_per_seq]
  int max_blocks_per_seq = 0;
  int block_size = 0;
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  float scale = 1.0f;
  int sliding_window = 0;  // <= 0: none
};

template <DType C>
void paged_attention(const PagedAttentionArgs& args);

// Whether the active ISA runs the integer scores and P V for this cache dtype and head size
// (cpu/paged_attention_tiles.h's IntScoresFn / IntPvFn: bf16 caches on AVX2, head_dim 64, 128).
bool attention_int16(DType cache, int head_dim);

}  // namespace fastlm::cpu
