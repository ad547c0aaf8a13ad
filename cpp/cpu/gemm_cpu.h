#pragma once
// The canonical (batch-invariant) GEMM: y[M,N] = x[M,K] @ w[N,K]^T (+ bias[N]) where each
// output element is computed by exactly the same arithmetic whatever M is, which tile or
// thread it falls in, and which other rows share the call. A token's hidden state therefore
// does not depend on how many tokens were in its forward pass (prefix-cache hits, chunked
// prefill, the other requests of a step).
//
// The order contract (one order for every M, tile shape, cache block and thread count):
//   y[r][j] = s + bias[j], where s is ONE fused multiply-add chain over k in increasing order:
//     s = 0; for k = 0 .. K-1: s = fma(w[j][k], x[r][k], s)
//   (with bf16 weights x[r][k] is first rounded to bf16; K is padded to even with zeros, which
//   leave s unchanged). Output columns run along the vector lanes, so GEMV (M = 1), the
//   register-blocked small-M tiles and the cache-blocked large-M loop are the same chain; a K
//   cache block stores s to y and the next block resumes it (an exact round trip). The scalar,
//   AVX2 and AVX-512 paths are therefore bitwise identical to each other. The AVX512-BF16 path
//   (vdpbf16ps) instead adds one pair product per step, s = dpbf16(s, w[j][2q..2q+1],
//   x[r][2q..2q+1]); it too is the same for every M, but differs from the others in rounding.
//
// The kernels read weights in a panel layout (cpu/gemm_pack.h): pack_weights() makes it once
// (the models do so at load); an unpacked matrix is packed per call (same arithmetic, slower).
#include <cstdint>

namespace fastlm::cpu {

// w is float32 or bf16 bits [N,K]; with bf16 weights x is rounded to bf16 first (the operand
// precision of every bf16 path, oneDNN's included). bias may be null. Threads split N only.
void gemm_canonical(const float* x, const void* w, bool w_bf16, const float* bias, float* y,
                    int64_t m, int64_t n, int64_t k);

// The largest M the invariance-off mode may still route to the canonical GEMM (its GEMV range).
inline constexpr int kGemvMaxRows = 8;

}  // namespace fastlm::cpu
