#include "sched/block_pool.h"

#include "core/status.h"

namespace fastlm::sched {

// ---- FreeBlockQueue ----

FreeBlockQueue::FreeBlockQueue(int num_blocks)
    : prev_(num_blocks), next_(num_blocks), in_queue_(num_blocks, 0) {
  for (int32_t i = 0; i < num_blocks; ++i) push_back(i);
}

int32_t FreeBlockQueue::front() const {
  FASTLM_ASSERT(size_ > 0);
  return head_;
}

int32_t FreeBlockQueue::pop_front() {
  int32_t id = front();
  remove(id);
  return id;
}

void FreeBlockQueue::push_back(int32_t id) {
  FASTLM_ASSERT(id >= 0 && id < static_cast<int32_t>(in_queue_.size()) && !in_queue_[id]);
  prev_[id] = tail_;
  next_[id] = kNil;
  if (tail_ == kNil) {
    head_ = id;
  } else {
    next_[tail_] = id;
  }
  tail_ = id;
  in_queue_[id] = 1;
  ++size_;
}

void FreeBlockQueue::push_front(int32_t id) {
  FASTLM_ASSERT(id >= 0 && id < static_cast<int32_t>(in_queue_.size()) && !in_queue_[id]);
  prev_[id] = kNil;
  next_[id] = head_;
  if (head_ == kNil) {
    tail_ = id;
  } else {
    prev_[head_] = id;
  }
  head_ = id;
  in_queue_[id] = 1;
  ++size_;
}

void FreeBlockQueue::remove(int32_t id) {
  FASTLM_ASSERT(id >= 0 && id < static_cast<int32_t>(in_queue_.size()) && in_queue_[id]);
  int32_t p = prev_[id], n = next_[id];
  if (p == kNil) {
    head_ = n;
  } else {
    next_[p] = n;
  }
  if (n == kNil) {
    tail_ = p;
  } else {
    prev_[n] = p;
  }
  prev_[id] = next_[id] = kNil;
  in_queue_[id] = 0;
  --size_;
}

std::vector<int32_t> FreeBlockQueue::to_vector() const {
  std::vector<int32_t> out;
  out.reserve(size_);
  for (int32_t id = head_; id != kNil; id = next_[id]) out.push_back(id);
  return out;
}

// ---- BlockPool ----

BlockPool::BlockPool(int num_blocks, bool enable_caching)
    : enable_caching_(enable_caching),
      blocks_(num_blocks > 0 ? num_blocks : 0),
      free_queue_(num_blocks > 0 ? num_blocks : 0) {
  FASTLM_CHECK_ARG(num_blocks > 0, "num_blocks must be positive, got ", num_blocks);
  for (int32_t i = 0; i < num_blocks; ++i) blocks_[i].id = i;
}

double BlockPool::usage() const {
  return 1.0 - static_cast<double>(num_free_blocks()) / static_cast<double>(num_blocks());
}

const KvBlock& BlockPool::block(int32_t id) const {
  FASTLM_ASSERT(id >= 0 && id < num_blocks());
  return blocks_[id];
}

void BlockPool::evict_hash(KvBlock& b) {
  if (!b.hash) return;
  auto it = cached_.find(*b.hash);
  FASTLM_ASSERT(it != cached_.end() && it->second == b.id);  // I3
  cached_.erase(it);
  b.hash.reset();
}

std::vector<int32_t> BlockPool::get_new_blocks(int n) {
  FASTLM_ASSERT(n >= 0);
  FASTLM_CHECK(n <= num_free_blocks(), "BlockPool: asked for ", n, " blocks, only ",
               num_free_blocks(), " free");
  std::vector<int32_t> ids;
  ids.reserve(n);
  for (int i = 0; i < n; ++i) {
    KvBlock& b = blocks_[free_queue_.pop_front()];
    FASTLM_ASSERT(b.ref_cnt == 0);  // I1
    evict_hash(b);
    b.ref_cnt = 1;
    ids.push_back(b.id);
  }
  return ids;
}

std::optional<int32_t> BlockPool::get_cached_block(const BlockHash& hash) const {
  if (!enable_caching_) return std::nullopt;
  auto it = cached_.find(hash);
  if (it == cached_.end()) return std::nullopt;
  return it->second;
}

bool BlockPool::cache_block(int32_t block_id, const BlockHash& hash) {
  FASTLM_ASSERT(block_id >= 0 && block_id < num_blocks());
  KvBlock& b = blocks_[block_id];
  FASTLM_ASSERT(b.ref_cnt > 0);  // only a block a request holds (and just computed) is cached
  if (!enable_caching_) return false;
  if (b.hash) {
    FASTLM_ASSERT(*b.hash == hash);  // a block's content never changes while it is held
    return true;
  }
  // Two requests computed the same block concurrently: keep the first; the duplicate stays
  // unregistered and is recycled as a plain free block.
  if (!cached_.emplace(hash, block_id).second) return false;
  b.hash = hash;
  return true;
}

void BlockPool::touch(std::span<const int32_t> block_ids) {
  for (int32_t id : block_ids) {
    FASTLM_ASSERT(id >= 0 && id < num_blocks());
    KvBlock& b = blocks_[id];
    if (b.ref_cnt == 0) free_queue_.remove(id);  // I1
    ++b.ref_cnt;
  }
}

void BlockPool::free_blocks(std::span<const int32_t> block_ids) {
  for (int32_t id : block_ids) {
    FASTLM_ASSERT(id >= 0 && id < num_blocks());
    KvBlock& b = blocks_[id];
    FASTLM_ASSERT(b.ref_cnt > 0);  // double free
    if (--b.ref_cnt != 0) continue;
    // I1. A cached block joins the tail (least recently freed is evicted first); a block that
    // holds nothing reusable goes to the head, so the next allocation takes it before evicting
    // any cached block, and the KV pages in use stay the few recently touched ones (the resident
    // set of a CPU backend does not creep up to the whole KV budget).
    if (b.hash) {
      free_queue_.push_back(id);
    } else {
      free_queue_.push_front(id);
    }
  }
}

bool BlockPool::reset_prefix_cache() {
  if (num_free_blocks() != num_blocks()) return false;
  for (KvBlock& b : blocks_) b.hash.reset();
  cached_.clear();
  return true;
}

void BlockPool::check_invariants() const {
  int num_zero = 0, num_hashed = 0;
  for (const KvBlock& b : blocks_) {
    FASTLM_ASSERT(b.ref_cnt >= 0);
    FASTLM_ASSERT((b.ref_cnt == 0) == free_queue_.contains(b.id));  // I1
    if (b.ref_cnt == 0) ++num_zero;
    if (b.hash) {
      FASTLM_ASSERT(enable_caching_);  // I4
      auto it = cached_.find(*b.hash);
      FASTLM_ASSERT(it != cached_.end() && it->second == b.id);  // I3
      ++num_hashed;
    }
  }
  FASTLM_ASSERT(num_zero == num_free_blocks());                                 // I2
  FASTLM_ASSERT(static_cast<int>(free_queue_.to_vector().size()) == num_zero);  // I2
  FASTLM_ASSERT(num_hashed == static_cast<int>(cached_.size()));                // I3
}

}  // namespace fastlm::sched
