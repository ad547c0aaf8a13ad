// The register tile of the canonical GEMM (gemm_cpu.cc), written once for every vector ISA.
// No include guard on purpose: gemm_cpu.cc includes this file once per ISA, inside a namespace
// that defines the vector traits `Vec` and the macro FASTLM_TILE_TARGET (that ISA's target
// attribute), so one body serves AVX2, AVX-512 and AVX512-BF16. (GCC cannot inline a
// target-specific intrinsic into a template that lacks the target, hence the textual inclusion
// rather than a traits template parameter.)
//
// Vec provides: V (vector of float lanes), Op (a loaded operand vector: V, or bf16 pairs), X (x
// element: float, or bf16 bits for vdpbf16ps), kStep (k elements one vector step consumes),
// kMaskedTail (the last partial step is a masked vector step; otherwise a scalar fma tail after the
// horizontal sum), zero(), load_x(const X*), load_w(const WT*), load_w_tail(const WT*, int64_t
// left), fma(acc, w, x) and reduce(acc0, acc1) = horizontal sum of acc0 + acc1.

// The canonical per-output-element order (the same for every M, tile shape and thread):
//   acc0 takes the vector steps at k = 0, 2S, 4S, ..., acc1 the steps at k = S, 3S, ...
//   (S = Vec::kStep); a last full step (k % 2S >= S) and, with masked tails, the partial step
//   go to acc0; then s = reduce(acc0, acc1), then (without masked tails) s = fma(w_j, x_j, s)
//   for the k % S leftover j in order, then y = s + bias.
// A tile computes y for MR rows of x against `cols` weight rows (cols a multiple of NR), NR
// weight rows at a time, so the MR x NR x 2 accumulators stay in registers and each loaded
// vector is reused NR (x) or MR (w) times.
template <int MR, int NR, typename WT>
FASTLM_TILE_TARGET void gemm_tile(const void* xv, int64_t ldx, const void* wv, int64_t k,
                                  const float* bias, float* y, int64_t ldy, int64_t cols) {
  using V = typename Vec::V;
  using Op = typename Vec::Op;
  using X = typename Vec::X;
  constexpr int64_t S = Vec::kStep;
  const X* x = static_cast<const X*>(xv);
  for (int64_t c0 = 0; c0 < cols; c0 += NR) {
    const WT* w = static_cast<const WT*>(wv) + c0 * k;
    V acc0[MR][NR], acc1[MR][NR];
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 16
      for (int c = 0; c < NR; ++c) acc0[r][c] = acc1[r][c] = Vec::zero();
    int64_t i = 0;
    for (; i + 2 * S <= k; i += 2 * S) {
      // One half at a time keeps only NR weight vectors live next to the accumulators.
      Op wa[NR];
#pragma GCC unroll 16
      for (int c = 0; c < NR; ++c) wa[c] = Vec::load_w(w + c * k + i);
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        const Op xa = Vec::load_x(x + r * ldx + i);
#pragma GCC unroll 16
        for (int c = 0; c < NR; ++c) acc0[r][c] = Vec::fma(acc0[r][c], wa[c], xa);
      }
#pragma GCC unroll 16
      for (int c = 0; c < NR; ++c) wa[c] = Vec::load_w(w + c * k + i + S);
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        const Op xb = Vec::load_x(x + r * ldx + i + S);
#pragma GCC unroll 16
        for (int c = 0; c < NR; ++c) acc1[r][c] = Vec::fma(acc1[r][c], wa[c], xb);
      }
    }
    // At most one full step and (masked tails only) one partial step, both into acc0.
    for (; i < k; i += S) {
      const bool masked = i + S > k;
      if (masked && !Vec::kMaskedTail) break;
      Op wa[NR];
#pragma GCC unroll 16
      for (int c = 0; c < NR; ++c)
        wa[c] = masked ? Vec::load_w_tail(w + c * k + i, k - i) : Vec::load_w(w + c * k + i);
// x rows are zero-padded to whole steps, so x never needs a masked load.
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        const Op xa = Vec::load_x(x + r * ldx + i);
#pragma GCC unroll 16
        for (int c = 0; c < NR; ++c) acc0[r][c] = Vec::fma(acc0[r][c], wa[c], xa);
      }
    }
    const int64_t tail = std::min(i, k);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 16
      for (int c = 0; c < NR; ++c) {
        float s = Vec::reduce(acc0[r][c], acc1[r][c]);
        for (int64_t j = tail; j < k; ++j)
          s = std::fma(to_f32(w[c * k + j]), to_f32(x[r * ldx + j]), s);
        y[r * ldy + c0 + c] = s + (bias ? bias[c0 + c] : 0.0f);
      }
    }
  }
}
