#pragma once
// Pieces both attention kernels share: where a sequence's key row lives (paged or dense), which
// keys a query position sees, and the argument checks.
#include "common.cuh"
#include "fastlm_cuda/attention.h"

namespace fastlm::cuda {

// Pointer to head `kvh` of key (or value) row j of sequence s.
template <typename T>
__device__ __forceinline__ const T* kv_row(const AttentionArgs& a, const void* paged,
                                           const void* dense, int s, int seq_begin, int j,
                                           int kvh) {
  if (a.block_tables != nullptr) {
    const int block =
        a.block_tables[static_cast<int64_t>(s) * a.max_blocks_per_seq + j / a.block_size];
    const int64_t row = static_cast<int64_t>(block) * a.block_size + j % a.block_size;
    return static_cast<const T*>(paged) + (row * a.num_kv_heads + kvh) * a.head_dim;
  }
  return static_cast<const T*>(dense) + static_cast<int64_t>(seq_begin + j) * a.kv_stride +
         static_cast<int64_t>(kvh) * a.head_dim;
}

struct KeyRange {
  int lo, hi;  // keys [lo, hi)
};

// Keys a query at position `pos` of a sequence with `seq_len` keys may see.
__device__ __forceinline__ KeyRange visible_keys(const AttentionArgs& a, int pos, int seq_len) {
  if (!a.causal) return {0, seq_len};
  const int lo = a.sliding_window > 0 ? max(0, pos - a.sliding_window + 1) : 0;
  return {lo, min(pos + 1, seq_len)};
}

__device__ __forceinline__ int seq_len_of(const AttentionArgs& a, int s) {
  return a.seq_lens != nullptr ? a.seq_lens[s] : a.query_start_loc[s + 1] - a.query_start_loc[s];
}

Status check_attention_args(const AttentionArgs& a, const char* who);

}  // namespace fastlm::cuda
