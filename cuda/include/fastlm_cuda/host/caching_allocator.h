#pragma once
// Caching allocator bookkeeping (PyTorch's CUDACachingAllocator idea): device memory comes from a
// RawAllocator in large segments, is split into blocks, and freed blocks go back to a size-ordered
// free list instead of to the driver, so steady-state steps never call cudaMalloc/cudaFree (which
// synchronize the device). Host-only: the CUDA backend plugs cudaMalloc/cudaFree in as the
// RawAllocator; tests plug in host memory.
//
// Size classes:
//   request  <= 1 MiB  -> rounded up to 512 B, served from the small pool (2 MiB segments)
//   request  >  1 MiB  -> rounded up to 512 B, served from the large pool; a new segment is
//                         20 MiB below 10 MiB, else the request rounded up to 2 MiB
//
//   segment  |<------------------------------ 20 MiB ------------------------------>|
//   blocks   | A (allocated, 3 MiB) | B (free, 5 MiB) | C (allocated, 12 MiB)        |
//   free(A) merges A with B (adjacent and free) into one 8 MiB free block.
//
// Invariants (checked by check_invariants(), asserted in the tests):
//  - The blocks of a segment tile it exactly, in address order (prev/next links).
//  - No two adjacent blocks of a segment are both free (free() merges).
//  - A block is in its pool's free set iff it is free; allocated blocks are in `allocated_`.
//  - stats().reserved_bytes = sum of segment sizes; allocated_bytes = sum of allocated blocks.
// Single stream: a block freed on the host is reusable at once because every kernel of the
// engine runs on one stream, in order (a multi-stream backend would need recorded events).
#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <unordered_map>

namespace fastlm::cuda {

// Where segments come from. allocate returns nullptr when out of memory (it must not throw).
class RawAllocator {
 public:
  virtual ~RawAllocator() = default;
  virtual void* allocate(size_t bytes) = 0;
  virtual void deallocate(void* ptr, size_t bytes) = 0;
};

struct AllocatorStats {
  size_t allocated_bytes = 0;       // handed out now (rounded sizes)
  size_t reserved_bytes = 0;        // held from the RawAllocator now
  size_t peak_allocated_bytes = 0;  // max of allocated_bytes
  size_t peak_reserved_bytes = 0;
  int64_t num_allocs = 0;      // allocate() calls that succeeded
  int64_t num_cache_hits = 0;  // of which served from a free block
  int64_t num_segments_allocated = 0;
  int64_t num_segments_released = 0;
  int64_t num_oom_retries = 0;  // raw allocation failed, cache released, retried
};

class CachingAllocator {
 public:
  static constexpr size_t kMinBlockSize = 512;
  static constexpr size_t kSmallSize = 1 << 20;       // largest small request
  static constexpr size_t kSmallSegment = 2 << 20;    // small-pool segment
  static constexpr size_t kLargeSegment = 20 << 20;   // large-pool segment below kMinLargeAlloc
  static constexpr size_t kMinLargeAlloc = 10 << 20;  // from here, a segment per request
  static constexpr size_t kRoundLarge = 2 << 20;      // rounding of such segments
  static constexpr size_t kMinLargeSplitRemainder = kSmallSize;  // leftover worth a block

  explicit CachingAllocator(RawAllocator& raw) : raw_(raw) {}
  ~CachingAllocator();
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  // Throws fastlm::Error ("out of memory", with the stats) when even an emptied cache cannot
  // serve the request. allocate(0) returns nullptr.
  void* allocate(size_t bytes);
  void free(void* ptr);
  // Gives every wholly free segment back to the RawAllocator.
  void empty_cache();

  const AllocatorStats& stats() const { return stats_; }
  // Throws fastlm::Error naming the first broken invariant.
  void check_invariants() const;
  static size_t round_size(size_t bytes);
  // Size of the segment a request of `rounded` bytes gets when no free block fits.
  static size_t segment_size(size_t rounded);

 private:
  struct Block {
    char* ptr;
    size_t size;
    bool small_pool;
    bool allocated = false;
    Block* prev = nullptr;  // neighbours in the same segment
    Block* next = nullptr;
  };
  struct BySizeThenAddress {
    bool operator()(const Block* a, const Block* b) const {
      return a->size != b->size ? a->size < b->size : a->ptr < b->ptr;
    }
  };
  using Pool = std::set<Block*, BySizeThenAddress>;

  Pool& pool(bool small) { return small ? small_free_ : large_free_; }
  Block* find_free(bool small, size_t size);
  Block* new_segment(bool small, size_t size);
  void release_segment(Block* block);
  // Merges b->next (free, out of its pool) into b.
  static void absorb_next(Block* b);
  bool release_free_segments();
  std::string describe() const;

  RawAllocator& raw_;
  Pool small_free_;
  Pool large_free_;
  std::unordered_map<void*, Block*> allocated_;
  std::unordered_map<void*, size_t> segments_;  // segment start -> size
  AllocatorStats stats_;
};

}  // namespace fastlm::cuda
