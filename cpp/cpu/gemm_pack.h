#pragma once
// Weights in the panel layout the canonical GEMM (cpu/gemm_cpu.h) streams, and a registry that
// lets the GEMM find the packed copy of a weight matrix from its row-major pointer.
//
// Layout: output columns in panels of kPanel; a panel holds all of K, k-major, so a tile reads
// it front to back:
//
//   f32:  panel p = [K][kPanel] floats           element (j = p*kPanel + c, k) at [k][c]
//   bf16: panel p = [K2/2][kPanel][2] bf16 bits   element (j, k) at [k/2][c][k%2], K2 = K even
//
//   w [N,K] row-major        panels (kPanel = 16)
//   row j: k0 k1 k2 ...  ->  | j0k0 j0k1 j1k0 j1k1 ... j15k0 j15k1 | j0k2 j0k3 ... |  (bf16)
//
// The bf16 pairs give AVX2/AVX-512 the even-k and odd-k weights of 8/16 columns from one load
// (shift / mask of each 32-bit lane) and vdpbf16ps its operand directly. Columns past N and the
// padding k of an odd K are zero.
#include <cstdint>
#include <memory>
#include <vector>

namespace fastlm::cpu {

inline constexpr int64_t kPanel = 16;

struct PackedWeights {
  PackedWeights() = default;
  PackedWeights(const PackedWeights&) = delete;  // `data` may point into wb / wf
  PackedWeights& operator=(const PackedWeights&) = delete;
  const void* source = nullptr;  // the row-major matrix this packs (registry key)
  bool bf16 = false;
  int64_t n = 0, k = 0;
  int64_t k2 = 0;            // K rounded up to the packing step (2 for bf16, 1 for f32)
  int64_t panel_elems = 0;   // elements per panel: k2 * kPanel
  std::vector<uint16_t> wb;  // bf16 panels, owned (empty once moved: move_panels)
  std::vector<float> wf;     // f32 panels, owned (likewise)
  // The panels the GEMM reads: wb / wf's data, or the copy move_panels put elsewhere.
  const void* data = nullptr;
  std::shared_ptr<void> moved_to;  // keeps that copy alive
  int64_t panels() const { return (n + kPanel - 1) / kPanel; }
  size_t bytes() const { return static_cast<size_t>(panels() * panel_elems) * (bf16 ? 2 : 4); }
};

// Packs w [n,k] (float32, or bf16 bits) into `out` (any previous contents replaced).
void pack_into(const void* w, bool bf16, int64_t n, int64_t k, PackedWeights& out);

// Packs w once and registers the copy under w's address for as long as the returned handle
// lives; packing the same (w, n, k, dtype) again while it lives returns the same copy. The
// caller must keep w itself unchanged and alive while the handle lives.
std::shared_ptr<const PackedWeights> pack_weights(const void* w, bool bf16, int64_t n, int64_t k);

// Moves w's panels (w.bytes() bytes) to dst, which `owner` keeps alive, and frees w's own copy:
// a model places its matrices in one huge-page buffer this way. Call only while no GEMM reads w
// (model load).
void move_panels(const PackedWeights& w, void* dst, std::shared_ptr<void> owner);

// The registered copy of w with these dims, or null.
std::shared_ptr<const PackedWeights> find_packed(const void* w, bool bf16, int64_t n, int64_t k);

}  // namespace fastlm::cpu
