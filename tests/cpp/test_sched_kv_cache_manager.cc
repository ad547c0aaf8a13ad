// KvCacheManager: block tables, allocation arithmetic, prefix hits and LRU eviction.
#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "core/status.h"
#include "sched/kv_cache_manager.h"
#include "sched/request.h"

namespace fastlm::sched {
namespace {

using Ids = std::vector<int32_t>;

Request make_request(const std::string& id, Ids prompt) {
  Request r;
  r.request_id = id;
  r.prompt_token_ids = std::move(prompt);
  return r;
}

Ids iota_tokens(int n, int32_t start) {
  Ids t(n);
  std::iota(t.begin(), t.end(), start);
  return t;
}

// Allocates and "computes" the whole prompt, as a scheduler step would.
void prefill(KvCacheManager& m, Request& r) {
  ComputedBlocks hit = m.get_computed_blocks(r);
  r.num_computed_tokens = 0;
  ASSERT_TRUE(m.allocate_slots(r, r.num_tokens() - hit.num_tokens, hit));
  r.num_computed_tokens = r.num_tokens();
  m.cache_blocks(r);
}

TEST(KvCacheManager, AllocatesBlocksAsTokensGrow) {
  KvCacheManager m(4, 8, true);
  Request r = make_request("a", iota_tokens(10, 0));
  ASSERT_TRUE(m.allocate_slots(r, 10));
  EXPECT_EQ(m.block_ids("a"), (Ids{0, 1, 2}));
  EXPECT_EQ(m.num_free_blocks(), 5);
  r.num_computed_tokens = 10;
  r.output_token_ids.push_back(99);  // decode: 11 tokens fit in 3 blocks
  ASSERT_TRUE(m.allocate_slots(r, 1));
  EXPECT_EQ(m.block_ids("a"), (Ids{0, 1, 2}));
  r.num_computed_tokens = 11;
  r.output_token_ids.push_back(98);
  ASSERT_TRUE(m.allocate_slots(r, 1));  // 12 tokens: still 3 blocks
  EXPECT_EQ(m.block_ids("a"), (Ids{0, 1, 2}));
  r.num_computed_tokens = 12;
  r.output_token_ids.push_back(97);
  ASSERT_TRUE(m.allocate_slots(r, 1));  // 13th token opens block 3
  EXPECT_EQ(m.block_ids("a"), (Ids{0, 1, 2, 3}));
  m.free(r);
  EXPECT_EQ(m.block_ids("a"), Ids{});
  EXPECT_EQ(m.num_free_blocks(), 8);
  // Nothing cached: freed tail first, each to the head, where the next allocation looks.
  EXPECT_EQ(m.pool().free_block_ids(), (Ids{0, 1, 2, 3, 4, 5, 6, 7}));
  m.pool().check_invariants();
}

TEST(KvCacheManager, AllocationFailureChangesNothing) {
  KvCacheManager m(4, 4, true);
  Request a = make_request("a", iota_tokens(8, 0));
  ASSERT_TRUE(m.allocate_slots(a, 8));  // {0, 1}
  Request b = make_request("b", iota_tokens(9, 100));
  EXPECT_FALSE(m.allocate_slots(b, 9));  // needs 3, 2 free
  EXPECT_EQ(m.num_free_blocks(), 2);
  EXPECT_EQ(m.block_ids("b"), Ids{});
  EXPECT_EQ(m.num_requests(), 1);
  EXPECT_EQ(m.prefix_cache_stats().queries, 8u);  // only the admitted request counted
  ASSERT_TRUE(m.allocate_slots(b, 8));            // a chunk that fits
  EXPECT_EQ(m.block_ids("b"), (Ids{2, 3}));
  m.pool().check_invariants();
}

TEST(KvCacheManager, PrefixHitSharesBlocksByRefCount) {
  KvCacheManager m(4, 8, true);
  Request a = make_request("a", iota_tokens(10, 0));
  prefill(m, a);
  EXPECT_EQ(m.block_ids("a"), (Ids{0, 1, 2}));
  // Only the two full blocks are cached; the partial third is not.
  EXPECT_TRUE(m.pool().block(0).hash.has_value());
  EXPECT_TRUE(m.pool().block(1).hash.has_value());
  EXPECT_FALSE(m.pool().block(2).hash.has_value());

  Ids pb = iota_tokens(8, 0);
  pb.push_back(500);
  pb.push_back(501);
  Request b = make_request("b", pb);  // shares the first 8 tokens
  ComputedBlocks hit = m.get_computed_blocks(b);
  EXPECT_EQ(hit.block_ids, (Ids{0, 1}));
  EXPECT_EQ(hit.num_tokens, 8);
  EXPECT_EQ(m.pool().block(0).ref_cnt, 1);  // lookup alone changes nothing
  ASSERT_TRUE(m.allocate_slots(b, 2, hit));
  EXPECT_EQ(m.block_ids("b"), (Ids{0, 1, 3}));
  EXPECT_EQ(m.pool().block(0).ref_cnt, 2);
  EXPECT_EQ(m.pool().block(1).ref_cnt, 2);
  EXPECT_EQ(m.prefix_cache_stats().queries, 20u);
  EXPECT_EQ(m.prefix_cache_stats().hits, 8u);

  m.free(a);                                                   // shared blocks stay held by b
  EXPECT_EQ(m.pool().free_block_ids(), (Ids{2, 4, 5, 6, 7}));  // uncached 2 to the head
  m.free(b);
  EXPECT_EQ(m.pool().free_block_ids(), (Ids{3, 2, 4, 5, 6, 7, 1, 0}));  // cached 1, 0 to the tail
  m.pool().check_invariants();
}

TEST(KvCacheManager, LastPromptTokenIsAlwaysRecomputed) {
  KvCacheManager m(4, 8, true);
  Request a = make_request("a", iota_tokens(8, 0));
  prefill(m, a);
  m.free(a);
  // Same 8-token prompt: only 1 block (4 tokens) may hit, as (8 - 1) / 4 = 1.
  Request b = make_request("b", iota_tokens(8, 0));
  ComputedBlocks hit = m.get_computed_blocks(b);
  EXPECT_EQ(hit.block_ids, (Ids{0}));
  EXPECT_EQ(hit.num_tokens, 4);
  // One more token: both blocks hit.
  Ids p9 = iota_tokens(8, 0);
  p9.push_back(77);
  Request c = make_request("c", p9);
  EXPECT_EQ(m.get_computed_blocks(c).block_ids, (Ids{0, 1}));
  // A one-token prompt never hits.
  Request d = make_request("d", Ids{0});
  EXPECT_TRUE(m.get_computed_blocks(d).block_ids.empty());
}

TEST(KvCacheManager, LruCachedBlocksAreEvictedFirstAndBreakTheChain) {
  KvCacheManager m(4, 6, true);
  Request a = make_request("a", iota_tokens(8, 0));
  prefill(m, a);  // {0, 1}
  m.free(a);
  EXPECT_EQ(m.pool().free_block_ids(), (Ids{2, 3, 4, 5, 1, 0}));
  Request b = make_request("b", iota_tokens(8, 100));
  prefill(m, b);  // {2, 3}
  m.free(b);
  EXPECT_EQ(m.pool().free_block_ids(), (Ids{4, 5, 1, 0, 3, 2}));
  Request c = make_request("c", iota_tokens(12, 200));
  prefill(m, c);  // takes 4, 5 and then 1: a's tail block, the least recently freed
  EXPECT_EQ(m.block_ids("c"), (Ids{4, 5, 1}));
  Ids pa = iota_tokens(8, 0);
  pa.push_back(9);
  Request a2 = make_request("a2", pa);
  EXPECT_EQ(m.get_computed_blocks(a2).block_ids, (Ids{0}));  // block 1's hash is gone
  Ids pb = iota_tokens(8, 100);
  pb.push_back(9);
  Request b2 = make_request("b2", pb);
  EXPECT_EQ(m.get_computed_blocks(b2).block_ids, (Ids{2, 3}));
  m.pool().check_invariants();
}

TEST(KvCacheManager, HitOnFreeBlocksCountsAgainstFreeSpace) {
  KvCacheManager m(4, 3, true);
  Request a = make_request("a", iota_tokens(8, 0));
  prefill(m, a);
  m.free(a);  // {0, 1} cached and free; 3 free in all
  Ids p = iota_tokens(8, 0);
  for (int i = 0; i < 5; ++i) p.push_back(50 + i);  // 13 tokens -> 4 blocks
  Request b = make_request("b", p);
  ComputedBlocks hit = m.get_computed_blocks(b);
  ASSERT_EQ(hit.block_ids, (Ids{0, 1}));
  // 2 hit blocks (taken off the free queue) + 2 new > 3 free.
  EXPECT_FALSE(m.allocate_slots(b, 5, hit));
  EXPECT_EQ(m.pool().block(0).ref_cnt, 0);
  EXPECT_EQ(m.num_free_blocks(), 3);
  // A chunk of 4 new tokens fits: 2 hits + 1 new.
  ASSERT_TRUE(m.allocate_slots(b, 4, hit));
  EXPECT_EQ(m.block_ids("b"), (Ids{0, 1, 2}));
  EXPECT_EQ(m.num_free_blocks(), 0);
  m.pool().check_invariants();
}

TEST(KvCacheManager, BlocksSpanningPromptAndOutputAreCached) {
  KvCacheManager m(4, 8, true);
  Request a = make_request("a", iota_tokens(6, 0));
  prefill(m, a);                // 6 tokens: block 0 full
  a.output_token_ids = {6, 7};  // two decode steps' samples
  ASSERT_TRUE(m.allocate_slots(a, 2));
  a.num_computed_tokens = 8;
  m.cache_blocks(a);
  EXPECT_TRUE(m.pool().block(1).hash.has_value());
  Ids p = iota_tokens(8, 0);
  p.push_back(8);
  Request b = make_request("b", p);  // prompt equals a's prompt + output
  EXPECT_EQ(m.get_computed_blocks(b).block_ids, (Ids{0, 1}));
}

TEST(KvCacheManager, CacheSaltSeparatesCaches) {
  KvCacheManager m(4, 8, true);
  Request a = make_request("a", iota_tokens(9, 0));
  a.cache_salt = "tenant-a";
  prefill(m, a);
  Request same = make_request("same", iota_tokens(9, 0));
  same.cache_salt = "tenant-a";
  EXPECT_EQ(m.get_computed_blocks(same).block_ids, (Ids{0, 1}));  // same salt: hit
  Request other = make_request("other", iota_tokens(9, 0));
  other.cache_salt = "tenant-b";
  EXPECT_TRUE(m.get_computed_blocks(other).block_ids.empty());  // different salt: miss
  Request none = make_request("none", iota_tokens(9, 0));
  EXPECT_TRUE(m.get_computed_blocks(none).block_ids.empty());  // no salt: miss
  // The salt keys the first block only, yet no later block matches either: the chain carries it.
  Request tail = make_request("tail", iota_tokens(9, 0));
  tail.cache_salt = "tenant-b";
  prefill(m, tail);
  EXPECT_EQ(m.pool().num_cached_blocks(), 4);
}

TEST(KvCacheManager, CachingDisabled) {
  KvCacheManager m(4, 8, false);
  Request a = make_request("a", iota_tokens(9, 0));
  prefill(m, a);
  m.free(a);
  Request b = make_request("b", iota_tokens(9, 0));
  EXPECT_TRUE(m.get_computed_blocks(b).block_ids.empty());
  EXPECT_EQ(m.prefix_cache_stats().queries, 0u);
  m.pool().check_invariants();
}

TEST(KvCacheManager, ConcurrentDuplicateBlocksStayConsistent) {
  KvCacheManager m(4, 8, true);
  Request a = make_request("a", iota_tokens(9, 0));
  Request b = make_request("b", iota_tokens(9, 0));
  // Both admitted in one step, before either computed anything: no hit for b.
  ASSERT_TRUE(m.allocate_slots(a, 9));
  ASSERT_TRUE(m.allocate_slots(b, 9, m.get_computed_blocks(b)));
  EXPECT_EQ(m.block_ids("a"), (Ids{0, 1, 2}));
  EXPECT_EQ(m.block_ids("b"), (Ids{3, 4, 5}));
  a.num_computed_tokens = b.num_computed_tokens = 9;
  m.cache_blocks(a);
  m.cache_blocks(b);  // same hashes: a's blocks keep them
  EXPECT_EQ(m.pool().num_cached_blocks(), 2);
  EXPECT_FALSE(m.pool().block(3).hash.has_value());
  m.free(a);
  m.free(b);
  // Uncached blocks (2 and all of b's) to the head, cached 1 and 0 to the tail.
  EXPECT_EQ(m.pool().free_block_ids(), (Ids{3, 4, 5, 2, 6, 7, 1, 0}));
  Request c = make_request("c", iota_tokens(9, 0));
  EXPECT_EQ(m.get_computed_blocks(c).block_ids, (Ids{0, 1}));
  m.pool().check_invariants();
}

}  // namespace
}  // namespace fastlm::sched
