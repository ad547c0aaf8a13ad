#include "sched/kv_cache_manager.h"

#include <algorithm>

#include "core/status.h"

namespace fastlm::sched {

namespace {
int cdiv(int a, int b) { return (a + b - 1) / b; }
}  // namespace

KvCacheManager::KvCacheManager(int block_size, int num_blocks, bool enable_caching)
    : block_size_(block_size), pool_(num_blocks, enable_caching) {
  FASTLM_CHECK_ARG(block_size > 0, "block_size must be positive, got ", block_size);
}

BlockHash KvCacheManager::hash_block(const sched::Request& request, int block_index,
                                     const std::optional<BlockHash>& parent) const {
  const int begin = block_index * block_size_;
  FASTLM_ASSERT(begin + block_size_ <= request.num_tokens());
  // The salt goes into the first block only: every later hash chains through it.
  const std::string_view extra = block_index == 0 ? std::string_view(request.cache_salt) : "";
  const int np = request.num_prompt_tokens();
  if (begin + block_size_ <= np) {  // common case: the block lies inside the prompt
    return hash_block_tokens(
        parent, std::span<const int32_t>(request.prompt_token_ids.data() + begin, block_size_),
        extra);
  }
  std::vector<int32_t> tokens(block_size_);
  for (int i = 0; i < block_size_; ++i) tokens[i] = request.token_at(begin + i);
  return hash_block_tokens(parent, tokens, extra);
}

ComputedBlocks KvCacheManager::get_computed_blocks(const sched::Request& request) const {
  ComputedBlocks out;
  if (!pool_.enable_caching()) return out;
  // Prompt logprobs need the logits of every prompt position: nothing may be skipped (vLLM).
  if (request.params.prompt_logprobs >= 0) return out;
  const int max_blocks = (request.num_tokens() - 1) / block_size_;
  std::optional<BlockHash> parent;
  for (int i = 0; i < max_blocks; ++i) {
    BlockHash h = hash_block(request, i, parent);
    std::optional<int32_t> id = pool_.get_cached_block(h);
    if (!id) break;
    out.block_ids.push_back(*id);
    parent = h;
  }
  out.num_tokens = static_cast<int>(out.block_ids.size()) * block_size_;
  return out;
}

// Allocation arithmetic (block_size 4; c: computed slot, h: prefix-hit slot, n: slot for a
// token computed this step, .: spare slot):
//
//   admission (no blocks yet):      later step (chunked prefill / decode):
//   [h h h h][h h h h][n n n n][n . . .]   [c c c c][c c n n][n n n n][n . . .]
//   |<----- hits ---->|<- new blocks ->|   |<--- existing --->|<- new blocks ->|
//   |<- num_computed >|<- num_new_tokens ->|   |<-num_computed->|<- num_new_tokens ->|
//
//   num_computed        = req.num_computed_tokens + new_computed.num_tokens
//   num_required_blocks = cdiv(num_computed + num_new_tokens, block_size)
//   num_new_blocks      = num_required_blocks - existing blocks - hit blocks
//   fits  <=>  num_new_blocks + (hit blocks at ref 0: touch takes them off the free queue)
//              <= num_free_blocks
bool KvCacheManager::allocate_slots(const sched::Request& request, int num_new_tokens,
                                    const ComputedBlocks& new_computed) {
  FASTLM_ASSERT(num_new_tokens >= 0);
  auto it = requests_.find(request.request_id);
  const bool first = it == requests_.end();
  const int num_existing = first ? 0 : static_cast<int>(it->second.block_ids.size());
  const int num_hit = static_cast<int>(new_computed.block_ids.size());
  FASTLM_ASSERT(num_hit == 0 || num_existing == 0);  // prefix hits only on admission
  FASTLM_ASSERT(new_computed.num_tokens == num_hit * block_size_);

  const int num_computed = request.num_computed_tokens + new_computed.num_tokens;
  const int num_required_blocks = cdiv(num_computed + num_new_tokens, block_size_);
  const int num_new_blocks = std::max(0, num_required_blocks - num_existing - num_hit);
  int num_hit_free = 0;
  for (int32_t id : new_computed.block_ids) num_hit_free += pool_.block(id).ref_cnt == 0;
  if (num_new_blocks + num_hit_free > pool_.num_free_blocks()) return false;

  RequestBlocks& rb = first ? requests_[request.request_id] : it->second;
  if (first && pool_.enable_caching()) {
    stats_.queries += request.num_tokens();
    stats_.hits += new_computed.num_tokens;
  }
  // Touch the hits before taking new blocks so the head of the free queue cannot evict them.
  pool_.touch(new_computed.block_ids);
  for (int32_t id : new_computed.block_ids) {
    const KvBlock& b = pool_.block(id);
    FASTLM_ASSERT(b.hash.has_value());
    rb.block_ids.push_back(id);
    rb.block_hashes.push_back(*b.hash);
  }
  std::vector<int32_t> fresh = pool_.get_new_blocks(num_new_blocks);
  rb.block_ids.insert(rb.block_ids.end(), fresh.begin(), fresh.end());
  FASTLM_ASSERT(static_cast<int>(rb.block_ids.size()) * block_size_ >=
                num_computed + num_new_tokens);
  return true;
}

void KvCacheManager::cache_blocks(const sched::Request& request, int num_tokens) {
  if (num_tokens < 0) num_tokens = request.num_computed_tokens;
  FASTLM_ASSERT(num_tokens <= request.num_tokens());
  if (!pool_.enable_caching()) return;
  auto it = requests_.find(request.request_id);
  if (it == requests_.end()) return;
  RequestBlocks& rb = it->second;
  const int num_full = std::min(num_tokens / block_size_, static_cast<int>(rb.block_ids.size()));
  for (int i = static_cast<int>(rb.block_hashes.size()); i < num_full; ++i) {
    std::optional<BlockHash> parent;
    if (i > 0) parent = rb.block_hashes[i - 1];
    BlockHash h = hash_block(request, i, parent);
    pool_.cache_block(rb.block_ids[i], h);
    rb.block_hashes.push_back(h);
  }
}

void KvCacheManager::free(const sched::Request& request) {
  auto it = requests_.find(request.request_id);
  if (it == requests_.end()) return;
  std::vector<int32_t> reversed(it->second.block_ids.rbegin(), it->second.block_ids.rend());
  pool_.free_blocks(reversed);
  requests_.erase(it);
}

const std::vector<int32_t>& KvCacheManager::block_ids(const std::string& request_id) const {
  static const std::vector<int32_t> kEmpty;
  auto it = requests_.find(request_id);
  return it == requests_.end() ? kEmpty : it->second.block_ids;
}

}  // namespace fastlm::sched
