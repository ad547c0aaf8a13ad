#pragma once
// KV-cache sizing on a GPU, as vLLM does after its profile run: the engine may use
// gpu_memory_utilization x total memory; what the weights, the profile forward's peak
// activations and the rest (cuBLAS workspace, CUDA graphs, the CUDA context's growth) take comes
// off, and the remainder is cut into whole blocks.
//
//   |<------------------------- total_bytes ----------------------------------->|
//   |<----------- total x gpu_memory_utilization ---------->|<- left to others ->|
//   | weights | peak activations | other | KV cache blocks  |
//                                         ^ num_blocks = floor(remaining / bytes_per_block)
//
// Like vLLM, the requested share must be free when the engine starts (another process on the GPU
// makes it fail with a message, rather than OOM mid-serving).
#include <cstddef>
#include <cstdint>

namespace fastlm::cuda {

struct KvSizingInput {
  size_t total_bytes = 0;          // cudaMemGetInfo total
  size_t free_bytes_at_start = 0;  // cudaMemGetInfo free before the model loaded
  double gpu_memory_utilization = 0.9;
  size_t weights_bytes = 0;
  size_t peak_activation_bytes = 0;  // the profile forward's peak (allocator stats)
  size_t other_bytes = 0;            // workspaces, graphs, context growth measured at profile
  size_t bytes_per_block = 0;        // all layers, K and V (kv::KvStorage::bytes_per_block)
  int block_size = 16;
  int max_model_len = 0;
};

struct KvSizing {
  int64_t num_blocks = 0;
  size_t kv_bytes = 0;  // num_blocks x bytes_per_block
  // num_blocks / ceil(max_model_len / block_size): full-length requests at once (start-up line)
  double max_concurrency = 0.0;
};

// Throws fastlm::InvalidArgument for a bad utilization or when no block fits (the message says
// how much memory was short, as vLLM's does).
KvSizing size_kv_cache(const KvSizingInput& in);

}  // namespace fastlm::cuda
