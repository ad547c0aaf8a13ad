#pragma once
// The KV cache memory: for each layer a K and a V tensor
// [num_blocks, block_size, num_kv_heads, head_dim]. Block ids come from sched::BlockPool.
#include <vector>

#include "core/tensor.h"

namespace fastlm::model {

struct KvStorage {
  int num_blocks = 0;
  int block_size = 16;
  std::vector<Tensor> k;  // one per layer
  std::vector<Tensor> v;

  // Uninitialized: attention only reads slots that a forward pass has written.
  static KvStorage allocate(int num_layers, int num_blocks, int block_size, int num_kv_heads,
                            int head_dim, DType dtype) {
    KvStorage s;
    s.num_blocks = num_blocks;
    s.block_size = block_size;
    for (int i = 0; i < num_layers; ++i) {
      s.k.push_back(Tensor::empty({num_blocks, block_size, num_kv_heads, head_dim}, dtype));
      s.v.push_back(Tensor::empty({num_blocks, block_size, num_kv_heads, head_dim}, dtype));
    }
    return s;
  }
  // Bytes one block takes across all layers, K and V.
  static size_t bytes_per_block(int num_layers, int block_size, int num_kv_heads, int head_dim,
                                DType dtype) {
    return static_cast<size_t>(2) * num_layers * block_size * num_kv_heads * head_dim *
           dtype_size(dtype);
  }
};

}  // namespace fastlm::model
