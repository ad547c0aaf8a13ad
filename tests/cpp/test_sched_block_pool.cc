// BlockPool / FreeBlockQueue: exact block ids and free-queue order after allocate/touch/free.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "core/status.h"
#include "sched/block_hash.h"
#include "sched/block_pool.h"

namespace fastlm::sched {
namespace {

using Ids = std::vector<int32_t>;
// A distinct stand-in hash per small integer, for the pool tests.
BlockHash H(uint8_t n) {
  BlockHash h{};
  h[0] = n;
  return h;
}
// hashlib.sha256 of block_hash.h's layout for ([1, 2, 3], no parent, key "salt").
constexpr const char* kSaltedHashHex =
    "5c846076791c90ffd6864e4d7b4b0f6102b08ad523a13bfcc76fa6df5a39eaee";

TEST(FreeBlockQueue, RemoveFromHeadMiddleTailKeepsOrder) {
  FreeBlockQueue q(5);
  EXPECT_EQ(q.to_vector(), (Ids{0, 1, 2, 3, 4}));
  q.remove(2);
  EXPECT_EQ(q.to_vector(), (Ids{0, 1, 3, 4}));
  q.remove(0);
  q.remove(4);
  EXPECT_EQ(q.to_vector(), (Ids{1, 3}));
  EXPECT_FALSE(q.contains(2));
  q.push_back(2);
  q.push_back(0);
  EXPECT_EQ(q.to_vector(), (Ids{1, 3, 2, 0}));
  EXPECT_EQ(q.pop_front(), 1);
  EXPECT_EQ(q.front(), 3);
  EXPECT_EQ(q.size(), 3);
  EXPECT_THROW(q.push_back(3), Error);  // already queued
  q.remove(3);
  q.remove(2);
  q.remove(0);
  EXPECT_EQ(q.size(), 0);
  EXPECT_TRUE(q.to_vector().empty());
  EXPECT_THROW(q.pop_front(), Error);
  q.push_front(4);  // into an empty queue: head and tail
  q.push_front(1);
  q.push_back(2);
  EXPECT_EQ(q.to_vector(), (Ids{1, 4, 2}));
  EXPECT_THROW(q.push_front(2), Error);  // already queued
  q.remove(2);
  EXPECT_EQ(q.pop_front(), 1);
  EXPECT_EQ(q.pop_front(), 4);
  EXPECT_EQ(q.size(), 0);
}

TEST(BlockPool, AllocatesFromHeadAndFreesUncachedBlocksToHead) {
  BlockPool pool(6, /*enable_caching=*/true);
  EXPECT_EQ(pool.num_free_blocks(), 6);
  EXPECT_DOUBLE_EQ(pool.usage(), 0.0);
  Ids a = pool.get_new_blocks(3);
  EXPECT_EQ(a, (Ids{0, 1, 2}));
  EXPECT_EQ(pool.free_block_ids(), (Ids{3, 4, 5}));
  EXPECT_DOUBLE_EQ(pool.usage(), 0.5);
  for (int32_t id : a) EXPECT_EQ(pool.block(id).ref_cnt, 1);
  Ids b = pool.get_new_blocks(2);
  EXPECT_EQ(b, (Ids{3, 4}));
  pool.free_blocks(Ids{2, 1, 0});  // a request's blocks, tail first; none cached
  EXPECT_EQ(pool.free_block_ids(), (Ids{0, 1, 2, 5}));
  EXPECT_EQ(pool.get_new_blocks(2), (Ids{0, 1}));  // the recently used pages, not block 5
  EXPECT_EQ(pool.free_block_ids(), (Ids{2, 5}));
  pool.check_invariants();
  EXPECT_THROW(pool.get_new_blocks(3), Error);
  EXPECT_EQ(pool.num_free_blocks(), 2);  // the failed call took nothing
  EXPECT_EQ(pool.get_new_blocks(0), Ids{});
}

TEST(BlockPool, DoubleFreeIsAnInvariantViolation) {
  BlockPool pool(2, false);
  Ids a = pool.get_new_blocks(1);
  pool.free_blocks(a);
  EXPECT_THROW(pool.free_blocks(a), Error);
}

TEST(BlockPool, CachedFreeBlocksStayReusableUntilEvictedFromHead) {
  BlockPool pool(4, true);
  Ids a = pool.get_new_blocks(2);  // {0, 1}
  EXPECT_TRUE(pool.cache_block(0, H(100)));
  EXPECT_TRUE(pool.cache_block(1, H(101)));
  EXPECT_TRUE(pool.cache_block(1, H(101)));  // idempotent
  EXPECT_EQ(pool.num_cached_blocks(), 2);
  pool.free_blocks(Ids{1, 0});  // cached: to the tail, in the given order
  EXPECT_EQ(pool.free_block_ids(), (Ids{2, 3, 1, 0}));
  EXPECT_EQ(pool.get_cached_block(H(100)), 0);
  EXPECT_EQ(pool.get_cached_block(H(101)), 1);

  // Uncached blocks at the head go first; the cached ones survive.
  EXPECT_EQ(pool.get_new_blocks(2), (Ids{2, 3}));
  EXPECT_EQ(pool.get_cached_block(H(101)), 1);
  // The next allocation reaches block 1 (least recently freed): its hash is evicted.
  EXPECT_EQ(pool.get_new_blocks(1), (Ids{1}));
  EXPECT_FALSE(pool.get_cached_block(H(101)).has_value());
  EXPECT_FALSE(pool.block(1).hash.has_value());
  EXPECT_EQ(pool.get_cached_block(H(100)), 0);
  EXPECT_EQ(pool.num_cached_blocks(), 1);
  pool.check_invariants();
}

TEST(BlockPool, TouchTakesFreeBlocksOutOfTheMiddleOfTheQueue) {
  BlockPool pool(5, true);
  Ids a = pool.get_new_blocks(3);  // {0, 1, 2}
  pool.cache_block(1, H(7));
  pool.free_blocks(Ids{2, 1, 0});  // uncached 2 and 0 to the head, cached 1 to the tail
  EXPECT_EQ(pool.free_block_ids(), (Ids{0, 2, 3, 4, 1}));
  pool.touch(Ids{1});  // a prefix hit on a free block
  EXPECT_EQ(pool.block(1).ref_cnt, 1);
  EXPECT_EQ(pool.free_block_ids(), (Ids{0, 2, 3, 4}));
  pool.touch(Ids{1});  // a second request shares it
  EXPECT_EQ(pool.block(1).ref_cnt, 2);
  EXPECT_EQ(pool.num_free_blocks(), 4);
  pool.free_blocks(Ids{1});
  EXPECT_EQ(pool.block(1).ref_cnt, 1);
  EXPECT_EQ(pool.free_block_ids(), (Ids{0, 2, 3, 4}));  // still held
  pool.free_blocks(Ids{1});
  EXPECT_EQ(pool.free_block_ids(), (Ids{0, 2, 3, 4, 1}));
  EXPECT_EQ(pool.get_cached_block(H(7)), 1);  // freed but still cached
  pool.check_invariants();
}

TEST(BlockPool, DuplicateHashKeepsTheFirstBlock) {
  BlockPool pool(3, true);
  Ids a = pool.get_new_blocks(2);
  EXPECT_TRUE(pool.cache_block(0, H(42)));
  EXPECT_FALSE(pool.cache_block(1, H(42)));
  EXPECT_EQ(pool.get_cached_block(H(42)), 0);
  EXPECT_FALSE(pool.block(1).hash.has_value());
  pool.check_invariants();
}

TEST(BlockPool, CachingDisabledRegistersNothing) {
  BlockPool pool(2, false);
  Ids a = pool.get_new_blocks(1);
  EXPECT_FALSE(pool.cache_block(a[0], H(1)));
  EXPECT_FALSE(pool.get_cached_block(H(1)).has_value());
  pool.check_invariants();
}

TEST(BlockPool, ResetPrefixCacheOnlyWhenIdle) {
  BlockPool pool(2, true);
  Ids a = pool.get_new_blocks(1);
  pool.cache_block(a[0], H(9));
  EXPECT_FALSE(pool.reset_prefix_cache());
  pool.free_blocks(a);
  EXPECT_TRUE(pool.reset_prefix_cache());
  EXPECT_FALSE(pool.get_cached_block(H(9)).has_value());
  EXPECT_EQ(pool.num_cached_blocks(), 0);
  pool.check_invariants();
}

TEST(BlockPool, RejectsNonPositiveSize) { EXPECT_THROW(BlockPool(0, true), InvalidArgument); }

TEST(BlockHash, DeterministicAndSensitiveToEveryInput) {
  const Ids t = {1, 2, 3, 4};
  const BlockHash h = hash_block_tokens(std::nullopt, t);
  EXPECT_EQ(h, hash_block_tokens(std::nullopt, t));
  EXPECT_NE(h, hash_block_tokens(h, t));            // parent
  EXPECT_NE(h, hash_block_tokens(BlockHash{}, t));  // "no parent" differs from an all-zero one
  EXPECT_NE(h, hash_block_tokens(std::nullopt, t, "salt"));  // extra key
  EXPECT_NE(hash_block_tokens(std::nullopt, t, "a"), hash_block_tokens(std::nullopt, t, "b"));
  EXPECT_NE(h, hash_block_tokens(std::nullopt, Ids{1, 2, 4, 3}));     // order
  EXPECT_NE(h, hash_block_tokens(std::nullopt, Ids{1, 2, 3, 5}));     // content
  EXPECT_NE(h, hash_block_tokens(std::nullopt, Ids{1, 2, 3, 4, 0}));  // length
  EXPECT_NE(hash_block_tokens(std::nullopt, Ids{-1}), hash_block_tokens(std::nullopt, Ids{0}));
  // Length prefixes keep token bytes and key bytes apart: moving a "token" into the key changes
  // the hash.
  EXPECT_NE(hash_block_tokens(std::nullopt, Ids{1}, std::string_view("\x02\0\0\0", 4)),
            hash_block_tokens(std::nullopt, Ids{1, 2}));
}

// The hash is SHA-256 of the documented byte layout: check one value against an independent
// implementation (Python: hashlib.sha256(bytes([0]) + struct.pack("<I3i", 3, 1, 2, 3) +
// struct.pack("<I", 4) + b"salt").hexdigest()).
TEST(BlockHash, IsSha256OfTheDocumentedLayout) {
  const BlockHash h = hash_block_tokens(std::nullopt, Ids{1, 2, 3}, "salt");
  std::string hex;
  for (uint8_t b : h) {
    const char* digits = "0123456789abcdef";
    hex += digits[b >> 4];
    hex += digits[b & 15];
  }
  EXPECT_EQ(hex, kSaltedHashHex);
}

TEST(BlockHash, OnlySha256IsSupported) {
  EXPECT_TRUE(is_supported_hash_algo("sha256"));
  EXPECT_FALSE(is_supported_hash_algo("builtin"));
  EXPECT_FALSE(is_supported_hash_algo("sha256_cbor"));
}

TEST(BlockHash, NoCollisionsAmongManyChainedBlocks) {
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> tok(0, 50);  // small vocab: many near-identical blocks
  std::unordered_set<BlockHash, BlockHashHasher> seen;
  const int kBlocks = 50000;
  std::optional<BlockHash> parent;
  for (int i = 0; i < kBlocks; ++i) {
    Ids t(16);
    for (auto& x : t) x = tok(rng);
    if (i % 64 == 0) parent.reset();
    BlockHash h = hash_block_tokens(parent, t);
    seen.insert(h);
    parent = h;
  }
  EXPECT_EQ(static_cast<int>(seen.size()), kBlocks);
}

}  // namespace
}  // namespace fastlm::sched
