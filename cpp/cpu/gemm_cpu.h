#pragma once
// The canonical (batch-invariant) GEMM: y[M,N] = x[M,K] @ w[N,K]^T (+ bias[N]) where each
// output element is computed by exactly the same arithmetic whatever M is, which tile or
// thread it falls in, and which other rows share the call. A token's hidden state therefore
// does not depend on how many tokens were in its forward pass (prefix-cache hits, chunked
// prefill, the other requests of a step). The per-element order is fixed per ISA path; it is
// written down in cpu/gemm_tile.h.
#include <cstdint>

namespace fastlm::cpu {

// w is float32 or bf16 bits [N,K]; with bf16 weights x is rounded to bf16 first (the operand
// precision of every bf16 path, oneDNN's included). bias may be null. Threads split N only.
void gemm_canonical(const float* x, const void* w, bool w_bf16, const float* bias, float* y,
                    int64_t m, int64_t n, int64_t k);

// Up to this many rows run as one streaming pass over the weights (decode); more rows run as
// register tiles over cache blocks of weight rows. Same arithmetic either way.
inline constexpr int kGemvMaxRows = 8;

}  // namespace fastlm::cpu
