// CachingAllocator bookkeeping on host memory: size classes, reuse, split/merge, the OOM retry
// after releasing cached segments, stats, and a randomized sequence checked against invariants.
#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <random>
#include <vector>

#include "core/status.h"
#include "fastlm_cuda/host/caching_allocator.h"

namespace fastlm::cuda {
namespace {

constexpr size_t MiB = 1 << 20;

// Host memory with a byte budget, recording every raw call.
class HostRaw : public RawAllocator {
 public:
  explicit HostRaw(size_t budget = SIZE_MAX) : budget_(budget) {}
  void* allocate(size_t bytes) override {
    if (in_use_ + bytes > budget_) {
      ++failures;
      return nullptr;
    }
    void* p = std::malloc(bytes);
    in_use_ += bytes;
    live[p] = bytes;
    ++allocs;
    return p;
  }
  void deallocate(void* p, size_t bytes) override {
    ASSERT_EQ(live.at(p), bytes);
    live.erase(p);
    in_use_ -= bytes;
    ++frees;
    std::free(p);
  }
  std::map<void*, size_t> live;
  int allocs = 0, frees = 0, failures = 0;

 private:
  size_t budget_;
  size_t in_use_ = 0;
};

TEST(CachingAllocator, SizeClasses) {
  EXPECT_EQ(CachingAllocator::round_size(1), 512u);
  EXPECT_EQ(CachingAllocator::round_size(512), 512u);
  EXPECT_EQ(CachingAllocator::round_size(513), 1024u);
  EXPECT_EQ(CachingAllocator::segment_size(1 * MiB), 2 * MiB);
  EXPECT_EQ(CachingAllocator::segment_size(1 * MiB + 512), 20 * MiB);
  EXPECT_EQ(CachingAllocator::segment_size(10 * MiB), 10 * MiB);
  EXPECT_EQ(CachingAllocator::segment_size(11 * MiB), 12 * MiB);
}

TEST(CachingAllocator, SmallRequestsShareOneSegmentAndAreReused) {
  HostRaw raw;
  CachingAllocator a(raw);
  void* p = a.allocate(1000);  // 1024 B of a 2 MiB small segment
  void* q = a.allocate(3000);  // 3072 B, right after p
  EXPECT_EQ(raw.allocs, 1);
  EXPECT_EQ(static_cast<char*>(q) - static_cast<char*>(p), 1024);
  EXPECT_EQ(a.stats().allocated_bytes, 4096u);
  EXPECT_EQ(a.stats().reserved_bytes, 2 * MiB);
  a.check_invariants();
  a.free(p);
  void* r = a.allocate(700);  // best fit: p's 1024 B block, not the tail of the segment
  EXPECT_EQ(r, p);
  EXPECT_EQ(a.stats().num_cache_hits, 2);  // q and r came from free blocks
  EXPECT_EQ(raw.allocs, 1);
  a.free(q);
  a.free(r);
  a.check_invariants();
  EXPECT_EQ(a.stats().allocated_bytes, 0u);
  EXPECT_EQ(a.stats().peak_allocated_bytes, 4096u);
}

TEST(CachingAllocator, FreeMergesNeighboursBackIntoOneBlock) {
  HostRaw raw;
  CachingAllocator a(raw);
  void* x = a.allocate(3 * MiB);  // large pool, 20 MiB segment
  void* y = a.allocate(5 * MiB);
  void* z = a.allocate(4 * MiB);
  EXPECT_EQ(raw.allocs, 1);
  a.free(x);
  a.free(z);  // merges with the free tail
  a.check_invariants();
  a.free(y);  // merges with both sides: the whole segment is one free block again
  a.check_invariants();
  void* w = a.allocate(19 * MiB);  // fits only in the merged 20 MiB block
  EXPECT_EQ(w, x);
  EXPECT_EQ(raw.allocs, 1);
  a.free(w);
  a.empty_cache();
  EXPECT_EQ(raw.frees, 1);
  EXPECT_EQ(a.stats().reserved_bytes, 0u);
  a.check_invariants();
}

TEST(CachingAllocator, HugeRequestsGetTheirOwnSegmentThenServeSmallerOnes) {
  HostRaw raw;
  CachingAllocator a(raw);
  void* big = a.allocate(33 * MiB);
  EXPECT_EQ(a.stats().reserved_bytes, 34 * MiB);  // rounded up to 2 MiB
  a.free(big);
  void* mid = a.allocate(4 * MiB);  // best fit: the cached 34 MiB block, split
  EXPECT_EQ(mid, big);
  void* big2 = a.allocate(32 * MiB);  // 30 MiB left there: a second segment
  EXPECT_NE(big2, big);
  EXPECT_EQ(raw.allocs, 2);
  a.check_invariants();
  a.free(mid);
  a.free(big2);
  EXPECT_EQ(a.stats().peak_reserved_bytes, 66 * MiB);
}

TEST(CachingAllocator, OutOfMemoryReleasesCacheAndRetries) {
  HostRaw raw(40 * MiB);
  CachingAllocator a(raw);
  a.free(a.allocate(30 * MiB));    // cached: 30 MiB reserved, 10 MiB left under the budget
  void* q = a.allocate(34 * MiB);  // no cached block fits; 30 + 34 > 40: release, retry
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(a.stats().num_oom_retries, 1);
  EXPECT_EQ(raw.failures, 1);
  EXPECT_EQ(a.stats().reserved_bytes, 34 * MiB);
  EXPECT_THROW(a.allocate(8 * MiB), Error);  // a 20 MiB segment: nothing cached to release
  EXPECT_EQ(raw.failures, 2);
  EXPECT_EQ(a.stats().allocated_bytes, 34 * MiB);
  a.free(q);
  a.check_invariants();
}

TEST(CachingAllocator, FreeOfAForeignPointerThrows) {
  HostRaw raw;
  CachingAllocator a(raw);
  int x = 0;
  EXPECT_THROW(a.free(&x), Error);
  EXPECT_EQ(a.allocate(0), nullptr);
}

TEST(CachingAllocator, RandomSequenceKeepsInvariantsAndContents) {
  HostRaw raw;
  std::mt19937 rng(7);
  {
    CachingAllocator a(raw);
    std::vector<std::pair<unsigned char*, size_t>> live;
    for (int step = 0; step < 3000; ++step) {
      if (live.empty() || rng() % 3 != 0) {
        const size_t sizes[] = {100, 4000, 300000, 1500000, 6 << 20, 12 << 20};
        const size_t n = sizes[rng() % 6] + rng() % 1000;
        auto* p = static_cast<unsigned char*>(a.allocate(n));
        p[0] = p[n - 1] = static_cast<unsigned char>(n);  // blocks must not overlap
        live.emplace_back(p, n);
      } else {
        const size_t i = rng() % live.size();
        auto [p, n] = live[i];
        ASSERT_EQ(p[0], static_cast<unsigned char>(n));
        ASSERT_EQ(p[n - 1], static_cast<unsigned char>(n));
        a.free(p);
        live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
      }
      if (step % 100 == 0) a.check_invariants();
      if (step % 1000 == 999) a.empty_cache();
    }
    a.check_invariants();
    EXPECT_GT(a.stats().num_cache_hits, 0);
    EXPECT_LE(a.stats().allocated_bytes, a.stats().reserved_bytes);
  }
  EXPECT_TRUE(raw.live.empty());  // the destructor gave every segment back
}

}  // namespace
}  // namespace fastlm::cuda
