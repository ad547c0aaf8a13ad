#include "cpu/gemm_pack.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <unordered_map>

namespace fastlm::cpu {

namespace {

// Element (j, i) of row-major src [n,k] to panel j / kPanel, k-step i / S, lane j % kPanel,
// slot i % S (S = 2: bf16 pairs; S = 1: plain k-major).
template <typename T, int S>
void pack_panels(const T* src, T* dst, int64_t n, int64_t k, int64_t panel_elems) {
  const int64_t panels = (n + kPanel - 1) / kPanel;
#pragma omp parallel for schedule(static) if (n * k >= (int64_t{1} << 16))
  for (int64_t p = 0; p < panels; ++p) {
    const int64_t cols = std::min(kPanel, n - p * kPanel);
    T* panel = dst + p * panel_elems;
    for (int64_t c = 0; c < cols; ++c) {
      const T* row = src + (p * kPanel + c) * k;
      for (int64_t i = 0; i < k; ++i) panel[(i / S) * S * kPanel + c * S + i % S] = row[i];
    }
  }
}

}  // namespace

void pack_into(const void* w, bool bf16, int64_t n, int64_t k, PackedWeights& out) {
  out.source = w;
  out.bf16 = bf16;
  out.n = n;
  out.k = k;
  out.k2 = bf16 ? (k + 1) / 2 * 2 : k;
  out.panel_elems = out.k2 * kPanel;
  const size_t total = static_cast<size_t>(out.panels() * out.panel_elems);
  if (bf16) {
    out.wf.clear();
    out.wb.assign(total, 0);
    pack_panels<uint16_t, 2>(static_cast<const uint16_t*>(w), out.wb.data(), n, k, out.panel_elems);
    out.data = out.wb.data();
  } else {
    out.wb.clear();
    out.wf.assign(total, 0.0f);
    pack_panels<float, 1>(static_cast<const float*>(w), out.wf.data(), n, k, out.panel_elems);
    out.data = out.wf.data();
  }
  out.moved_to.reset();
}

void move_panels(const PackedWeights& w, void* dst, std::shared_ptr<void> owner) {
  // The registry hands out const copies; their panels may move while nothing reads them.
  auto& m = const_cast<PackedWeights&>(w);
  std::memcpy(dst, m.data, m.bytes());
  m.data = dst;
  m.moved_to = std::move(owner);
  std::vector<uint16_t>().swap(m.wb);
  std::vector<float>().swap(m.wf);
}

namespace {

struct Registry {
  std::mutex mu;
  std::unordered_map<const void*, std::weak_ptr<const PackedWeights>> map;
};

Registry& registry() {
  static Registry* r = new Registry;  // outlives every handle, even at static destruction
  return *r;
}

bool same_dims(const PackedWeights& p, bool bf16, int64_t n, int64_t k) {
  return p.bf16 == bf16 && p.n == n && p.k == k;
}

}  // namespace

std::shared_ptr<const PackedWeights> find_packed(const void* w, bool bf16, int64_t n, int64_t k) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  auto it = r.map.find(w);
  if (it == r.map.end()) return nullptr;
  std::shared_ptr<const PackedWeights> p = it->second.lock();
  if (p == nullptr || !same_dims(*p, bf16, n, k)) return nullptr;
  return p;
}

std::shared_ptr<const PackedWeights> pack_weights(const void* w, bool bf16, int64_t n, int64_t k) {
  if (auto existing = find_packed(w, bf16, n, k)) return existing;
  auto* packed = new PackedWeights;
  pack_into(w, bf16, n, k, *packed);
  // The deleter unregisters the copy, unless a newer one took its place.
  std::shared_ptr<const PackedWeights> handle(packed, [](const PackedWeights* p) {
    Registry& r = registry();
    {
      std::lock_guard<std::mutex> lock(r.mu);
      auto it = r.map.find(p->source);
      if (it != r.map.end() && it->second.expired()) r.map.erase(it);
    }
    delete p;
  });
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.map[w] = handle;
  return handle;
}

}  // namespace fastlm::cpu
