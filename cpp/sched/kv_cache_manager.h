#pragma once
// Per-request block tables on top of the BlockPool, with prefix caching: a request's full
// blocks are hashed as a chain (sha256(parent, tokens, extra keys); the first block's extra key
// is the request's cache_salt) and, once computed, registered
// so later requests with the same prefix reuse them by reference count.
//
// Invariants:
//   - a request's block table covers at least its computed tokens:
//       block_ids.size() * block_size >= request.num_computed_tokens
//   - block_hashes[i] is the chained hash of block i; the first block_hashes.size() blocks are
//     full and computed (and registered in the pool, unless a duplicate held the hash first)
//   - every block in a block table has ref_cnt >= 1 (one per table holding it)
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "sched/block_pool.h"
#include "sched/request.h"

namespace fastlm::sched {

// Leading blocks of a request found in the prefix cache.
struct ComputedBlocks {
  std::vector<int32_t> block_ids;
  int num_tokens = 0;  // block_ids.size() * block_size
};

struct PrefixCacheStats {
  uint64_t queries = 0;  // tokens looked up (a request's tokens at each admission)
  uint64_t hits = 0;     // of which found in the cache
};

class KvCacheManager {
 public:
  KvCacheManager(int block_size, int num_blocks, bool enable_caching);

  int block_size() const { return block_size_; }
  int num_blocks() const { return pool_.num_blocks(); }
  int num_free_blocks() const { return pool_.num_free_blocks(); }
  double usage() const { return pool_.usage(); }
  bool enable_caching() const { return pool_.enable_caching(); }
  const PrefixCacheStats& prefix_cache_stats() const { return stats_; }
  BlockPool& pool() { return pool_; }
  const BlockPool& pool() const { return pool_; }

  // Longest run of leading full blocks of the request's tokens (prompt + output, so a
  // preempted request can hit its own blocks) found in the cache. Never the whole sequence: the
  // last token is always recomputed to get logits, so the hit is capped at num_tokens - 1
  // tokens, rounded down to whole blocks. Read-only: no ref counts change, no stats counted.
  ComputedBlocks get_computed_blocks(const sched::Request& request) const;

  // Makes room for num_new_tokens more tokens after the request's computed tokens and the
  // prefix hit `new_computed` (only on a request's first allocation since admission). Returns
  // false, changing nothing, when the pool lacks free blocks. Does not touch
  // request.num_computed_tokens: the scheduler owns it.
  bool allocate_slots(const sched::Request& request, int num_new_tokens,
                      const ComputedBlocks& new_computed = {});

  // Registers the request's full blocks covered by its first `num_tokens` tokens (default:
  // request.num_computed_tokens) in the prefix cache. No-op with caching off. The scheduler
  // may register blocks that this step's forward pass will fill: every layer writes the KV of
  // all scheduled tokens before any attention reads it, so a request admitted later in the
  // same step can share them (n > 1 children share their prompt this way).
  void cache_blocks(const sched::Request& request, int num_tokens = -1);

  // Returns the request's blocks to the pool, tail first (so the tail is evicted first) and
  // forgets the request. No-op for an unknown request.
  void free(const sched::Request& request);

  // The request's block table; an empty table for an unknown request. The reference stays
  // valid until free(request) (other requests coming and going do not move it).
  const std::vector<int32_t>& block_ids(const std::string& request_id) const;
  int num_requests() const { return static_cast<int>(requests_.size()); }

  // Drops all cached hashes when no block is in use. Returns whether it did.
  bool reset_prefix_cache() { return pool_.reset_prefix_cache(); }

 private:
  struct RequestBlocks {
    std::vector<int32_t> block_ids;
    std::vector<BlockHash> block_hashes;  // of the computed full blocks, in order
  };
  BlockHash hash_block(const sched::Request& request, int block_index,
                       const std::optional<BlockHash>& parent) const;

  int block_size_;
  BlockPool pool_;
  std::unordered_map<std::string, RequestBlocks> requests_;
  PrefixCacheStats stats_;
};

}  // namespace fastlm::sched
