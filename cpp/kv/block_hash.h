#pragma once
// Prefix-cache block hashes. A full block is identified by the hash of its parent block, its
// token ids and an extra key, so equal hashes mean equal prefixes up to and including the block.
// 64-bit splitmix-style mixing: deterministic across runs and platforms (no std::hash), and
// with 2^64 values a collision among the blocks one cache ever holds is not a practical concern.
#include <cstdint>
#include <optional>
#include <span>

namespace fastlm::kv {

using BlockHash = uint64_t;

// The splitmix64 finalizer: a bijection on 64-bit values with full avalanche.
inline uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

// hash(parent_hash, tokens, extra_key); parent is nullopt for the first block of a sequence.
BlockHash hash_block_tokens(std::optional<BlockHash> parent, std::span<const int32_t> tokens,
                            uint64_t extra_key);

}  // namespace fastlm::kv
