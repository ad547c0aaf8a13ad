#pragma once
// Weight-only quantized GEMM: y[M,N] = x[M,K] @ dequant(w)[N,K]^T (+ bias[N]) with w in packed
// blocks (core/qtype.h). Each row of x is quantized on the fly to int16 per 32 elements
// (dx = amax / 32767: 16 bits of every activation, finer than bf16), so every weight block meets
// one activation block in exact integer dot products (AVX2 vpmaddwd, or AVX-512 VNNI vpdpwssd
// on 256-bit lanes: the same int32 lanes exactly; every lane sum stays below 2^24, so its
// conversion to float is exact too).
//
// The per-output-element order (the same for every M, tile shape, thread and ISA path; the
// scalar path computes it directly):
//   acc = 0; for each 32-block b in order:
//     acc = fma(dw_b * dx_b, float(sum_j qw[j] qx[j]), acc)   (the block's exact int32 sum)
//       (Q6_K, Q3_K, a scale per 16 elements: the sums of elements 0..15 with dlo_b, then of
//        16..31 with dhi_b, two fmas)
//     acc = fma(mw_b, sx_b, acc)   (formats with a block minimum; sx_b = dx_b * sum(qx_b))
//   y = acc + bias
// so a token's row does not depend on how many rows share the call (issue 15's guarantee). One
// sum per block (not per lane) lets a tile keep eight rows of x in the lanes of one register,
// broadcast each weight pair to them and pay the scale arithmetic once per block and eight
// outputs: 1.5-2.3x the earlier per-lane order's tiles at M = 256 (qgemm_cpu.cc's run_lanes).
// Threads split N only.
#include <cstdint>

#include "core/qtype.h"

namespace fastlm::cpu {

// Formats qgemm runs natively (all of QType); a model loader dequantizes the others at load.
bool qgemm_supports(QType type);

// K must be a multiple of the format's block size; bias may be null. Row r of y starts at
// y + r * ldy (ldy >= n; 0 means n), so a call can fill columns of a wider output.
void qgemm(const float* x, const void* w, QType type, const float* bias, float* y, int64_t m,
           int64_t n, int64_t k, int64_t ldy = 0);

// One matrix of output features stacked from parts in different formats (a GGUF's q, k, v):
// part i gives p.n columns of y from its own rows, through its format's kernels, exactly as
// qgemm on that part alone would; x is quantized once and the parts share one parallel region.
// Rows of every part's y are ldy apart (ldy >= the parts' total n).
struct QgemmPart {
  const void* w;
  QType type;
  int64_t n;
  const float* bias;  // may be null
  float* y;
};
void qgemm_parts(const float* x, const QgemmPart* parts, int count, int64_t m, int64_t k,
                 int64_t ldy);

// The kernel family qgemm dispatches to on this CPU: "vnni", "avx2" or "scalar" (follows
// FASTLM_ISA / set_isa: vnni needs the avx512 level and AVX512-VNNI).
const char* qgemm_path();

}  // namespace fastlm::cpu
