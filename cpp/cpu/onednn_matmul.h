#pragma once
// oneDNN matmul primitives for ops::linear's larger M (batch invariance off), cached per shape:
// y[M,N] (row stride ldy) = act(x[M,K] @ w[N,K]^T + bias), x/w float32 or bf16 bits, y float32
// or bf16 bits.
#include <cstdint>

#include "core/activation.h"

namespace fastlm::cpu {

// Primitive creation costs far more than a small matmul, so primitives are cached per shape.
// ldy lets a primitive write a column slice of a wider y (the chunked bf16 fallback).
struct MatmulKey {
  int64_t m, n, k, ldy;
  bool bf16, bias;
  bool y_bf16 = false;                 // dst rounded to bf16 (after the activation)
  Activation act = Activation::kNone;  // fused as an eltwise post-op
  auto operator<=>(const MatmulKey&) const = default;
};

// Runs the cached primitive for `key` (created on first use; throws dnnl::error where oneDNN
// has no implementation, e.g. bf16 without AVX512).
void onednn_matmul(const MatmulKey& key, const void* x, const void* w, const float* bias, void* y);

}  // namespace fastlm::cpu
