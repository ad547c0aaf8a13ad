// Engine::allocate_kv_cache: how many KV blocks the cache gets (EngineConfig::kv_cache_memory,
// else the backend's budget; encoders: bookkeeping blocks only), and their storage.
#include <algorithm>

#include "core/status.h"
#include "engine/engine.h"
#include "ops/backend.h"

namespace fastlm::engine {

void Engine::allocate_kv_cache(int max_batched, Device device) {
  const model::ModelConfig& mc = model_->config();
  const DType kv_dtype = model_->compute_dtype();
  const size_t per_block = model::KvStorage::bytes_per_block(
      mc.num_hidden_layers, config_.block_size, mc.num_key_value_heads, mc.head_dim, kv_dtype);
  int64_t budget = config_.kv_cache_memory;
  if (!model_->uses_kv_cache()) {
    // Encoders: blocks are bookkeeping only (no memory). Every request finishes in the step
    // that admits it, so one step's worth of tokens (rounded up per sequence) is enough.
    budget = 0;
  } else if (budget <= 0) {
    // The backend knows its memory and its cap (CPU: a fraction of MemAvailable, <= 4 GiB).
    budget = ops::backend(device).kv_cache_budget({0, config_.kv_cache_fraction});
  }
  num_blocks_ = static_cast<int>(budget / static_cast<int64_t>(per_block));
  const int blocks_for_one = (max_model_len_ + config_.block_size - 1) / config_.block_size;
  if (!model_->uses_kv_cache()) {
    num_blocks_ =
        std::max(blocks_for_one, (max_batched + config_.block_size - 1) / config_.block_size +
                                     config_.max_num_seqs);
  }
  FASTLM_CHECK_ARG(num_blocks_ >= blocks_for_one, "the KV cache budget of ", budget,
                   " bytes holds ", num_blocks_, " blocks of ", config_.block_size,
                   " tokens, fewer than one sequence of max_model_len=", max_model_len_, " needs (",
                   blocks_for_one, "); raise kv_cache_memory or lower max_model_len");
  if (model_->uses_kv_cache()) {
    kv_ = model::KvStorage::allocate(mc.num_hidden_layers, num_blocks_, config_.block_size,
                                     mc.num_key_value_heads, mc.head_dim, kv_dtype);
    kv_bytes_ = per_block * static_cast<size_t>(num_blocks_);
  } else {
    kv_.num_blocks = num_blocks_;
    kv_.block_size = config_.block_size;
  }
}

}  // namespace fastlm::engine
