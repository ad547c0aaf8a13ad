// Packed GEMM weights (cpu/gemm_pack.h): moving a registered copy's panels into another buffer
// (what a model does to put them on huge pages) keeps every result bit and frees the copy the
// packing owned; the registry hands the same (moved) copy back.
#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "cpu/gemm_cpu.h"
#include "cpu/gemm_pack.h"

namespace fastlm::cpu {
namespace {

TEST(GemmPack, MovedPanelsGiveTheSameBits) {
  for (const bool bf16 : {true, false}) {
    const int64_t n = 37, k = 67;  // a partial last panel, odd K
    std::mt19937 rng(7);
    std::normal_distribution<float> nd;
    std::vector<float> wf(n * k);
    for (float& v : wf) v = nd(rng);
    std::vector<uint16_t> wb(n * k);
    for (int64_t i = 0; i < n * k; ++i) wb[i] = f32_to_bf16(wf[i]);
    const void* w = bf16 ? static_cast<const void*>(wb.data()) : wf.data();
    for (const int64_t m : {int64_t{1}, int64_t{3}, int64_t{20}}) {
      std::vector<float> x(m * k), before(m * n), after(m * n);
      for (float& v : x) v = nd(rng);
      std::shared_ptr<const PackedWeights> h = pack_weights(w, bf16, n, k);
      gemm_canonical(x.data(), w, bf16, nullptr, before.data(), m, n, k);
      const size_t bytes = h->bytes();
      auto buffer =
          std::shared_ptr<void>(std::aligned_alloc(64, (bytes + 63) / 64 * 64), std::free);
      void* dst = buffer.get();
      move_panels(*h, dst, buffer);
      EXPECT_EQ(h->data, dst);
      EXPECT_TRUE(h->wb.empty() && h->wf.empty());
      EXPECT_EQ(find_packed(w, bf16, n, k).get(), h.get());
      gemm_canonical(x.data(), w, bf16, nullptr, after.data(), m, n, k);
      EXPECT_EQ(before, after) << "bf16 " << bf16 << " m " << m;
    }
  }
}

}  // namespace
}  // namespace fastlm::cpu
