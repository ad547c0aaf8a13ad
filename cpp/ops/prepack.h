#pragma once
// Weight packing for ops::linear: done once at model load, so the GEMM streams its own layout.
#include <memory>
#include <vector>

#include "core/tensor.h"

namespace fastlm::ops {

// Packs a linear's weights w [N,K] (float32 or bf16) once into the layout the CPU GEMM streams
// (cpu/gemm_pack.h); while the returned handle lives, every linear on w reads the packed copy.
// w must stay alive and unchanged meanwhile. Null where nothing is packed (CUDA weights).
std::shared_ptr<const void> prepack_linear(const Tensor& w);

// Bytes the packed copy behind a prepack_linear handle holds (0 for a null handle).
size_t prepacked_bytes(const std::shared_ptr<const void>& handle);

// Moves the packed copy behind a non-null handle to dst (prepacked_bytes(handle) bytes, 64-byte
// aligned), which `owner` keeps alive: a model gathers its matrices in one huge-page buffer. Only
// while no linear reads it (model load).
void move_prepacked(const std::shared_ptr<const void>& handle, void* dst,
                    std::shared_ptr<void> owner);

// The handles a model keeps for its lifetime.
using PackedLinears = std::vector<std::shared_ptr<const void>>;

}  // namespace fastlm::ops
