#pragma once
// Typed body of ops::encoder_attention (float32).
#include <cstdint>

namespace fastlm::cpu {

// Bidirectional attention of each sequence's tokens over themselves. qkv rows are
// [q (H*D) | k (H*D) | v (H*D)]; out rows [H*D]. query_start_loc[num_seqs + 1] gives each
// sequence's rows.
void encoder_attention(const float* qkv, const int32_t* query_start_loc, int num_seqs,
                       int num_heads, int head_dim, float scale, float* out);

}  // namespace fastlm::cpu
