#include "fastlm_cuda/host/caching_allocator.h"

#include <algorithm>
#include <sstream>
#include <vector>

#include "core/status.h"

namespace fastlm::cuda {

size_t CachingAllocator::round_size(size_t bytes) {
  if (bytes < kMinBlockSize) return kMinBlockSize;
  return (bytes + kMinBlockSize - 1) / kMinBlockSize * kMinBlockSize;
}

size_t CachingAllocator::segment_size(size_t rounded) {
  if (rounded <= kSmallSize) return kSmallSegment;
  if (rounded < kMinLargeAlloc) return kLargeSegment;
  return (rounded + kRoundLarge - 1) / kRoundLarge * kRoundLarge;
}

CachingAllocator::~CachingAllocator() {
  // Blocks still allocated belong to tensors that outlive the allocator: their segments are
  // given back anyway (the device is going away), once each.
  for (auto& [start, size] : segments_) raw_.deallocate(start, size);
  auto delete_chain = [](Block* b) {
    while (b != nullptr) {
      Block* next = b->next;
      delete b;
      b = next;
    }
  };
  std::set<Block*> heads;
  for (Block* b : small_free_) heads.insert(b);
  for (Block* b : large_free_) heads.insert(b);
  for (auto& [p, b] : allocated_) heads.insert(b);
  std::set<Block*> firsts;
  for (Block* b : heads) {
    while (b->prev != nullptr) b = b->prev;
    firsts.insert(b);
  }
  for (Block* b : firsts) delete_chain(b);
}

CachingAllocator::Block* CachingAllocator::find_free(bool small, size_t size) {
  Pool& p = pool(small);
  Block key{nullptr, size, small};
  auto it = p.lower_bound(&key);
  if (it == p.end()) return nullptr;
  Block* b = *it;
  p.erase(it);
  return b;
}

CachingAllocator::Block* CachingAllocator::new_segment(bool small, size_t size) {
  const size_t seg = segment_size(size);
  void* ptr = raw_.allocate(seg);
  if (ptr == nullptr && release_free_segments()) {
    ++stats_.num_oom_retries;
    ptr = raw_.allocate(seg);
  }
  if (ptr == nullptr) return nullptr;
  segments_.emplace(ptr, seg);
  stats_.reserved_bytes += seg;
  stats_.peak_reserved_bytes = std::max(stats_.peak_reserved_bytes, stats_.reserved_bytes);
  ++stats_.num_segments_allocated;
  return new Block{static_cast<char*>(ptr), seg, small};
}

void* CachingAllocator::allocate(size_t bytes) {
  if (bytes == 0) return nullptr;
  const size_t size = round_size(bytes);
  const bool small = size <= kSmallSize;
  Block* b = find_free(small, size);
  if (b != nullptr) {
    ++stats_.num_cache_hits;
  } else {
    b = new_segment(small, size);
    if (b == nullptr) {
      throw Error(detail::concat("CUDA out of memory: tried to allocate ", bytes, " bytes (",
                                 describe(), ")"));
    }
  }
  const size_t remainder = b->size - size;
  if (small ? remainder >= kMinBlockSize : remainder > kMinLargeSplitRemainder) {
    Block* rest = new Block{b->ptr + size, remainder, small};
    rest->prev = b;
    rest->next = b->next;
    if (b->next != nullptr) b->next->prev = rest;
    b->next = rest;
    b->size = size;
    pool(small).insert(rest);
  }
  b->allocated = true;
  allocated_.emplace(b->ptr, b);
  ++stats_.num_allocs;
  stats_.allocated_bytes += b->size;
  stats_.peak_allocated_bytes = std::max(stats_.peak_allocated_bytes, stats_.allocated_bytes);
  return b->ptr;
}

void CachingAllocator::free(void* ptr) {
  if (ptr == nullptr) return;
  auto it = allocated_.find(ptr);
  FASTLM_CHECK(it != allocated_.end(), "CachingAllocator::free: pointer not allocated here");
  Block* b = it->second;
  allocated_.erase(it);
  stats_.allocated_bytes -= b->size;
  b->allocated = false;
  Pool& p = pool(b->small_pool);
  // Merge with free neighbours so a later request can use the whole run.
  if (b->prev != nullptr && !b->prev->allocated) {
    b = b->prev;
    p.erase(b);
    absorb_next(b);
  }
  if (b->next != nullptr && !b->next->allocated) {
    p.erase(b->next);
    absorb_next(b);
  }
  p.insert(b);
}

void CachingAllocator::absorb_next(Block* b) {
  Block* next = b->next;
  b->size += next->size;
  b->next = next->next;
  if (next->next != nullptr) next->next->prev = b;
  delete next;
}

void CachingAllocator::release_segment(Block* b) {
  pool(b->small_pool).erase(b);
  auto seg = segments_.find(b->ptr);
  FASTLM_ASSERT(seg != segments_.end() && seg->second == b->size);
  raw_.deallocate(b->ptr, b->size);
  stats_.reserved_bytes -= b->size;
  ++stats_.num_segments_released;
  segments_.erase(seg);
  delete b;
}

bool CachingAllocator::release_free_segments() {
  std::vector<Block*> whole;
  for (Pool* p : {&small_free_, &large_free_})
    for (Block* b : *p)
      if (b->prev == nullptr && b->next == nullptr) whole.push_back(b);
  for (Block* b : whole) release_segment(b);
  return !whole.empty();
}

void CachingAllocator::empty_cache() { release_free_segments(); }

std::string CachingAllocator::describe() const {
  std::ostringstream os;
  os << stats_.allocated_bytes << " bytes allocated, " << stats_.reserved_bytes
     << " bytes reserved in " << segments_.size() << " segments";
  return os.str();
}

void CachingAllocator::check_invariants() const {
  size_t reserved = 0, allocated = 0;
  for (const auto& [start, size] : segments_) {
    reserved += size;
    // Find the segment's first block: the allocated or free block that starts at `start`.
    const Block* b = nullptr;
    if (auto it = allocated_.find(start); it != allocated_.end()) b = it->second;
    for (const Pool* p : {&small_free_, &large_free_})
      for (const Block* f : *p)
        if (f->ptr == start) b = f;
    FASTLM_CHECK(b != nullptr && b->prev == nullptr, "segment without a first block");
    const char* end = static_cast<const char*>(start);
    bool prev_free = false;
    for (; b != nullptr; b = b->next) {
      FASTLM_CHECK(b->ptr == end, "blocks do not tile their segment");
      FASTLM_CHECK(!(prev_free && !b->allocated), "two adjacent free blocks");
      FASTLM_CHECK(b->next == nullptr || b->next->prev == b, "broken prev/next links");
      const Pool& p = b->small_pool ? small_free_ : large_free_;
      const bool in_pool = p.count(const_cast<Block*>(b)) == 1;
      FASTLM_CHECK(in_pool == !b->allocated, "free set out of step with block state");
      FASTLM_CHECK(b->allocated == (allocated_.count(b->ptr) == 1), "allocated map out of step");
      if (b->allocated) allocated += b->size;
      prev_free = !b->allocated;
      end += b->size;
    }
    FASTLM_CHECK(end == static_cast<const char*>(start) + size, "blocks do not cover segment");
  }
  FASTLM_CHECK(reserved == stats_.reserved_bytes, "reserved_bytes out of step");
  FASTLM_CHECK(allocated == stats_.allocated_bytes, "allocated_bytes out of step");
}

}  // namespace fastlm::cuda
