#pragma once
// The pool of KV cache blocks: ids, reference counts, the LRU free queue and the prefix-cache
// map (hash -> block). It knows nothing about tensors; block ids index model::KvStorage.
//
// Invariants (checked by FASTLM_ASSERT on every operation, fully by check_invariants()):
//   I1  a block is in the free queue  <=>  its ref_cnt == 0      (ref_cnt >= 0 always)
//   I2  num_free_blocks() == size of the free queue
//   I3  cached_[h] == id  <=>  blocks_[id].hash == h             (one block per hash)
//   I4  with enable_caching == false no block has a hash
// A free block may keep its hash: it stays reusable by a prefix hit (touch) until it reaches
// the head of the free queue and get_new_blocks() evicts the hash. Freed blocks go to the
// tail, so eviction is least-recently-freed first.
#include <cstdint>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

#include "sched/block_hash.h"

namespace fastlm::sched {

struct KvBlock {
  int32_t id = 0;
  int ref_cnt = 0;
  std::optional<BlockHash> hash;  // set while the block is registered in the prefix cache
};

// Doubly linked list of block ids over index arrays: O(1) pop_front, push_front, push_back and
// remove from the middle (a prefix hit on a free block takes it out wherever it is).
class FreeBlockQueue {
 public:
  // Starts holding every block, in id order 0..num_blocks-1.
  explicit FreeBlockQueue(int num_blocks);

  int size() const { return size_; }
  bool contains(int32_t id) const { return in_queue_[id] != 0; }
  int32_t front() const;
  int32_t pop_front();
  void push_back(int32_t id);
  void push_front(int32_t id);
  void remove(int32_t id);
  // Head to tail; O(n), for tests and debugging.
  std::vector<int32_t> to_vector() const;

 private:
  static constexpr int32_t kNil = -1;
  std::vector<int32_t> prev_, next_;
  std::vector<uint8_t> in_queue_;
  int32_t head_ = kNil;
  int32_t tail_ = kNil;
  int size_ = 0;
};

class BlockPool {
 public:
  BlockPool(int num_blocks, bool enable_caching);

  int num_blocks() const { return static_cast<int>(blocks_.size()); }
  bool enable_caching() const { return enable_caching_; }
  int num_free_blocks() const { return free_queue_.size(); }
  // Fraction of blocks held by requests (ref_cnt > 0), in [0, 1].
  double usage() const;
  int num_cached_blocks() const { return static_cast<int>(cached_.size()); }

  // Takes n blocks from the head of the free queue (ref_cnt becomes 1), evicting their hashes.
  // Throws fastlm::Error when fewer than n are free; callers check num_free_blocks() first.
  std::vector<int32_t> get_new_blocks(int n);
  // The block registered for this hash, if any (it may be free or in use).
  std::optional<int32_t> get_cached_block(const BlockHash& hash) const;
  // Registers a full, computed block (ref_cnt > 0) under its hash. Returns false (and leaves
  // the block unregistered) when caching is off or another block already holds this hash.
  bool cache_block(int32_t block_id, const BlockHash& hash);
  // A prefix hit: ref_cnt++ for each block; blocks at ref 0 leave the free queue.
  void touch(std::span<const int32_t> block_ids);
  // ref_cnt-- for each block, in the order given; blocks reaching 0 go to the free queue's
  // tail in that order (so pass a request's blocks tail-first to evict its tail first).
  void free_blocks(std::span<const int32_t> block_ids);
  // Drops every hash; only possible when no block is in use. Returns whether it did.
  bool reset_prefix_cache();

  const KvBlock& block(int32_t id) const;
  // Free queue, head (next allocated) to tail; O(n).
  std::vector<int32_t> free_block_ids() const { return free_queue_.to_vector(); }
  // O(num_blocks) check of I1..I4; throws on violation.
  void check_invariants() const;

 private:
  void evict_hash(KvBlock& b);

  bool enable_caching_;
  std::vector<KvBlock> blocks_;
  FreeBlockQueue free_queue_;
  std::unordered_map<BlockHash, int32_t, BlockHashHasher> cached_;
};

}  // namespace fastlm::sched
