#pragma once
// Weight-only quantized GEMM: y[M,N] = x[M,K] @ dequant(w)[N,K]^T (+ bias[N]) with w in packed
// blocks (core/qtype.h). Each row of x is quantized on the fly to int8 per 32 elements
// (d = amax / 127, as ggml's Q8 activation blocks), so every weight block meets one activation
// block in an integer dot product (AVX2 maddubs + madd, or AVX-512 VNNI vpdpbusd on 256-bit
// lanes: the same int32 lanes exactly).
//
// The per-output-element order (the same for every M, tile shape, thread and ISA path; the
// scalar path emulates it lane by lane):
//   acc[8] = 0, summ = 0; for each 32-block b in order:
//     p[l] = sum of the 4 integer products at k = 32b + 4l .. 32b + 4l + 3   (exact int32)
//     acc[l] = fma(dw_b * dx_b, float(p[l]), acc[l])   for l = 0..7 (Q6_K: lanes 4..7 take
//                                                       the second half-block's scale)
//     summ = fma(mw_b, sx_b, summ)   (formats with a block minimum; sx_b = dx_b * sum(qx_b))
//   y = ((acc[0]+acc[4]) + (acc[2]+acc[6])) + ((acc[1]+acc[5]) + (acc[3]+acc[7])) + summ + bias
// so a token's row does not depend on how many rows share the call (issue 15's guarantee).
// Threads split N only.
#include <cstdint>

#include "core/qtype.h"

namespace fastlm::cpu {

// Formats qgemm runs natively (all of QType); a model loader dequantizes the others at load.
bool qgemm_supports(QType type);

// K must be a multiple of the format's block size; bias may be null.
void qgemm(const float* x, const void* w, QType type, const float* bias, float* y, int64_t m,
           int64_t n, int64_t k);

// The kernel family qgemm dispatches to on this CPU: "vnni", "avx2" or "scalar" (follows
// FASTLM_ISA / set_isa: vnni needs the avx512 level and AVX512-VNNI).
const char* qgemm_path();

}  // namespace fastlm::cpu
