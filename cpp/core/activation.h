#pragma once
// Activations fused into ops (ops::linear's epilogue) and run by kernels of every backend.
#include <cstdint>

namespace fastlm {

enum class Activation : uint8_t {
  kNone,
  kGeluErf,   // 0.5 x (1 + erf(x / sqrt 2))
  kGeluTanh,  // HF "gelu_new" / "gelu_pytorch_tanh"
};

}  // namespace fastlm
