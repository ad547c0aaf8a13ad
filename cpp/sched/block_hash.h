#pragma once
// Prefix-cache block hashes. A full block is identified by the hash of its parent block, its
// token ids and its extra keys, so equal hashes mean equal prefixes up to and including the
// block (and equal extra keys: the first block carries the request's cache_salt, so tenants
// with different salts never share blocks).
//
// SHA-256 (OpenSSL's libcrypto), as vLLM hashes by default: the hash decides which tenant's KV
// a request reads, so a client must not be able to craft a prompt whose blocks collide with
// another tenant's (a fast unkeyed 64-bit hash allows exactly that). The hashed bytes are an
// unambiguous encoding of (parent hash or none, token count, token ids, extra keys).
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string_view>

namespace fastlm::sched {

using BlockHash = std::array<uint8_t, 32>;

// For unordered containers: a SHA-256 digest is already uniform, so its first bytes serve.
struct BlockHashHasher {
  size_t operator()(const BlockHash& h) const {
    size_t v;
    std::memcpy(&v, h.data(), sizeof v);
    return v;
  }
};

// The prefix-caching hash algorithms fastlm implements (vLLM's --prefix-caching-hash-algo).
// Only "sha256"; vLLM's "sha256_cbor" (CBOR-serialized input, for reproducibility across
// languages) is not offered.
bool is_supported_hash_algo(std::string_view name);

// sha256(parent, tokens, extra_key); parent is nullopt for the first block of a sequence and
// extra_key is empty when there is none.
BlockHash hash_block_tokens(const std::optional<BlockHash>& parent, std::span<const int32_t> tokens,
                            std::string_view extra_key = {});

}  // namespace fastlm::sched
