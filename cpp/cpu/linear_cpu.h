#pragma once
// Typed bodies of ops::linear: y[M,N] = x[M,K] @ w[N,K]^T (+ bias[N]).
// In batch-invariant mode (the default, cpu/batch_invariant.h) every M runs the canonical GEMM
// (cpu/gemm_cpu.h), whose per-element arithmetic does not depend on M. Otherwise small M
// (decode) still does, and larger M goes to a cached oneDNN matmul primitive.
#include <cstdint>

#include "core/activation.h"

namespace fastlm::cpu {

using LinearAct = Activation;  // the one activation enum (core/activation.h)

// With batch invariance off: the largest M served by the canonical GEMM for this weight dtype;
// above it oneDNN runs.
// Defaults (8 for bf16, 4 for f32) come from measurements; set_gemv_max_rows(r) forces r for
// both (0..8; 0 = always oneDNN), -1 restores the defaults. Env: FASTLM_GEMV_MAX_ROWS.
int gemv_max_rows(bool bf16_weights);
void set_gemv_max_rows(int rows);

// w float32 [N,K]; bias may be null.
void linear_f32(const float* x, const float* w, const float* bias, float* y, int64_t m, int64_t n,
                int64_t k);
// w bfloat16 bits [N,K]; x is rounded to bf16 and products accumulate in float32.
void linear_bf16(const float* x, const uint16_t* w, const float* bias, float* y, int64_t m,
                 int64_t n, int64_t k);

// y = act(x @ w^T + bias) as one oneDNN primitive (bias, activation and the rounding of y to
// bf16 fused into the matmul) with x and y each float32 or bf16 bits. Returns false, doing
// nothing, where that primitive does not apply: batch-invariant mode, M in the GEMV range,
// k == 0, or bf16 weights
// without native bf16 matmuls (the caller then composes linear_*, gelu and conversions).
bool linear_fused(const void* x, bool x_bf16, const void* w, bool w_bf16, const float* bias,
                  void* y, bool y_bf16, LinearAct act, int64_t m, int64_t n, int64_t k);
// The same primitive whatever the batch-invariance setting and M, for a caller whose M is fixed
// by the model rather than by the batch (ops::linear_per_request); bf16 weights without native
// bf16 matmuls run the f32 primitive over widened weight slices (x rounded to bf16). Returns
// false for k == 0 or where no primitive applies.
bool linear_fused_per_request(const void* x, bool x_bf16, const void* w, bool w_bf16,
                              const float* bias, void* y, bool y_bf16, LinearAct act, int64_t m,
                              int64_t n, int64_t k);

}  // namespace fastlm::cpu
