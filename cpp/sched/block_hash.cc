#include "sched/block_hash.h"

#include <openssl/evp.h>

#include <memory>
#include <vector>

#include "core/status.h"

namespace fastlm::sched {

namespace {

struct CtxDeleter {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};

// One digest context per thread, reused across blocks (EVP_DigestInit_ex resets it).
EVP_MD_CTX* thread_ctx() {
  thread_local std::unique_ptr<EVP_MD_CTX, CtxDeleter> ctx(EVP_MD_CTX_new());
  FASTLM_ASSERT(ctx != nullptr);
  return ctx.get();
}

void put_u32(std::vector<uint8_t>& buf, uint32_t v) {
  for (int i = 0; i < 4; ++i) buf.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

}  // namespace

bool is_supported_hash_algo(std::string_view name) { return name == "sha256"; }

BlockHash hash_block_tokens(const std::optional<BlockHash>& parent, std::span<const int32_t> tokens,
                            std::string_view extra_key) {
  // Layout: [1 parent byte][32-byte parent hash if any][u32 n][n x i32][u32 len][extra key],
  // integers little-endian; assembled first so the digest sees one update.
  thread_local std::vector<uint8_t> buf;
  buf.clear();
  buf.push_back(parent ? 1 : 0);
  if (parent) buf.insert(buf.end(), parent->begin(), parent->end());
  put_u32(buf, static_cast<uint32_t>(tokens.size()));
  for (int32_t t : tokens) put_u32(buf, static_cast<uint32_t>(t));
  put_u32(buf, static_cast<uint32_t>(extra_key.size()));
  buf.insert(buf.end(), extra_key.begin(), extra_key.end());

  EVP_MD_CTX* ctx = thread_ctx();
  BlockHash out;
  unsigned int len = 0;
  // Fetched once: EVP_sha256() would look the provider implementation up on every init.
  static EVP_MD* const sha256 = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  FASTLM_ASSERT(sha256 != nullptr);
  FASTLM_ASSERT(EVP_DigestInit_ex(ctx, sha256, nullptr) == 1);
  FASTLM_ASSERT(EVP_DigestUpdate(ctx, buf.data(), buf.size()) == 1);
  FASTLM_ASSERT(EVP_DigestFinal_ex(ctx, out.data(), &len) == 1 && len == out.size());
  return out;
}

}  // namespace fastlm::sched
