#include "kv/block_hash.h"

namespace fastlm::kv {

namespace {
constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ULL;
// Distinct seeds keep "no parent" apart from any parent value and tokens apart from lengths.
constexpr uint64_t kRootSeed = 0x6a09e667f3bcc908ULL;
constexpr uint64_t kParentSeed = 0xbb67ae8584caa73bULL;
}  // namespace

BlockHash hash_block_tokens(std::optional<BlockHash> parent, std::span<const int32_t> tokens,
                            uint64_t extra_key) {
  uint64_t h = parent ? mix64(*parent ^ kParentSeed) : kRootSeed;
  h = mix64(h + kGolden + extra_key);
  h = mix64(h + kGolden + tokens.size());
  // Each step is a bijection of the state for a fixed token, so two token sequences of the
  // same length collide only if the states collide somewhere: ~2^-64 per pair.
  for (int32_t t : tokens) h = mix64(h + kGolden + static_cast<uint32_t>(t));
  return h;
}

}  // namespace fastlm::kv
