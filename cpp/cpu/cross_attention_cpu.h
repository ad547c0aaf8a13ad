#pragma once
// Typed body of ops::cross_attention. C is the KV cache dtype (f32 or bf16); arguments are
// validated by the entry point (cpp/ops/cross_attention.cc).
#include <cstdint>

#include "core/dtype.h"

namespace fastlm::cpu {

struct CrossAttentionArgs {
  const float* q = nullptr;       // [T, H*D]
  const void* k_cache = nullptr;  // [num_blocks, block_size, H, D]
  const void* v_cache = nullptr;
  float* out = nullptr;                   // [T, H*D]
  int num_rows = 0;                       // T
  const int32_t* block_tables = nullptr;  // [T, blocks_per_row]
  int blocks_per_row = 0;
  int block_size = 0;
  int num_keys = 0;  // every row attends to the first num_keys slots of its blocks
  int num_heads = 0;
  int head_dim = 0;
  float scale = 1.0f;
};

template <DType C>
void cross_attention(const CrossAttentionArgs& args);

}  // namespace fastlm::cpu
