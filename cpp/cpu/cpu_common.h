#pragma once
// Helpers shared by the CPU kernel bodies: typed element loads/stores and OpenMP thresholds.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>

#include "core/dtype.h"

namespace fastlm::cpu {

// Element i of a float tensor of dtype D, as float.
template <DType D>
inline float load_f32(const void* p, int64_t i);
template <>
inline float load_f32<DType::kF32>(const void* p, int64_t i) {
  return static_cast<const float*>(p)[i];
}
template <>
inline float load_f32<DType::kBF16>(const void* p, int64_t i) {
  return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
}
template <>
inline float load_f32<DType::kF16>(const void* p, int64_t i) {
  return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
}

template <DType D>
inline void store_f32(void* p, int64_t i, float v);
template <>
inline void store_f32<DType::kF32>(void* p, int64_t i, float v) {
  static_cast<float*>(p)[i] = v;
}
template <>
inline void store_f32<DType::kBF16>(void* p, int64_t i, float v) {
  static_cast<uint16_t*>(p)[i] = f32_to_bf16(v);
}
template <>
inline void store_f32<DType::kF16>(void* p, int64_t i, float v) {
  static_cast<uint16_t*>(p)[i] = f32_to_f16(v);
}

// exp(x) to ~2 ulp, branch-free so loops over arrays auto-vectorize (std::exp does not without
// -ffast-math). Cephes-style: 2^n * poly(r), x = n ln2 + r. Inputs clamp to [-87, 88]: results
// below ~1e-38 are not zero, so callers that need exact zeros (masked scores) select them.
inline float fast_exp(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the mantissa
  const float t = x * 1.44269504088896341f + kRound;
  const float n = t - kRound;
  int32_t ti;
  std::memcpy(&ti, &t, sizeof(ti));
  const int32_t ni = ti - 0x4B400000;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (ni + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// Below this many elements an OpenMP fork costs more than it saves.
constexpr int64_t kParallelMinElems = int64_t{1} << 15;

// body(i) for i in [0, n): split statically over the OpenMP team when `parallel`, else a plain
// loop on this thread. (`#pragma omp parallel for if (false)` still sets up a one-thread team,
// ~0.2-0.4 us a call; a decode step makes ~12 such small calls per layer.)
template <class Body>
inline void parallel_for(int64_t n, bool parallel, const Body& body) {
  if (parallel) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) body(i);
  } else {
    for (int64_t i = 0; i < n; ++i) body(i);
  }
}

// Hands out [0, n) in chunks to the threads of a parallel region, each claiming the next chunk
// when it finishes the last: guided sizes (a share of what is left, shrinking to `grain`, chunk
// edges on multiples of grain), so a thread slowed by the VM or by its share of the memory
// bandwidth ends with small chunks instead of leaving the others waiting at the barrier. For
// work whose result does not depend on which thread computes which chunk.
class ChunkClaims {
 public:
  ChunkClaims(int64_t n, int64_t grain, int threads)
      : n_(n), grain_(std::max<int64_t>(1, grain)), parts_(2 * std::max(1, threads)) {}
  // The next chunk [begin, end), or false when all are taken.
  bool claim(int64_t& begin, int64_t& end) {
    int64_t at = next_.load(std::memory_order_relaxed);
    for (;;) {
      if (at >= n_) return false;
      const int64_t share = (n_ - at + parts_ - 1) / parts_;
      const int64_t size = (std::max(share, grain_) + grain_ - 1) / grain_ * grain_;
      const int64_t stop = std::min(n_, at + size);
      if (next_.compare_exchange_weak(at, stop, std::memory_order_relaxed)) {
        begin = at;
        end = stop;
        return true;
      }
    }
  }

 private:
  const int64_t n_, grain_;
  const int parts_;
  std::atomic<int64_t> next_{0};
};

}  // namespace fastlm::cpu
