// The register tile of the canonical GEMM (gemm_cpu.cc), written once for every vector ISA.
// No include guard on purpose: gemm_cpu.cc includes this file once per ISA, inside a namespace
// that defines the vector traits `Vec` and the macro FASTLM_TILE_TARGET (that ISA's target
// attribute), so one body serves AVX2 and AVX-512. (GCC cannot inline a target-specific
// intrinsic into a template that lacks the target, hence the textual inclusion rather than a
// traits template parameter.)
//
// Vec provides: V (kLanes float lanes), zero(), load(const float*), store(float*, V),
// bcast(const float*), fma(acc, w, x) = w * x + acc rounded once, even(const uint16_t* p) / odd(p)
// = the k-even / k-odd weights of kLanes columns from kLanes bf16 pairs at p.
//
// The tile follows the order of cpu/gemm_cpu.h: for each of MR rows of x and each output column
// of NP panels (panel layout: cpu/gemm_pack.h), one fma chain over k in [k0, k1), started from 0
// (resume = false) or from the value already in y (resume = true: a later K cache block). The
// chain is the same whichever MR / NP tile runs it: output columns are the vector lanes.
template <int MR, int NP, bool BF16>
FASTLM_TILE_TARGET void gemm_tile(const void* xv, int64_t ldx, const void* wv, int64_t pstride,
                                  int64_t k0, int64_t k1, float* y, int64_t ldy, bool resume) {
  using V = typename Vec::V;
  const float* x = static_cast<const float*>(xv);
  constexpr int VP = static_cast<int>(kPanel / Vec::kLanes);  // vectors per panel
  V acc[MR][NP * VP];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < NP * VP; ++v)
      acc[r][v] = resume ? Vec::load(y + r * ldy + v * Vec::kLanes) : Vec::zero();
  if constexpr (BF16) {
    const uint16_t* w = static_cast<const uint16_t*>(wv);
    for (int64_t i = k0; i < k1; i += 2) {
      const uint16_t* wi = w + i * kPanel;  // pair row i/2 of each panel
      if constexpr (MR <= 2) {
        // Decode streams every panel once: prefetch each panel kPrefetchBytes ahead, past its end
        // into the same panel of the next tile (which starts NP - 1 panels later).
        int64_t ahead = i * kPanel + kPrefetchElems;
        if (ahead >= pstride) ahead += (NP - 1) * pstride;
#pragma GCC unroll 16
        for (int p = 0; p < NP; ++p)
          _mm_prefetch(reinterpret_cast<const char*>(w + p * pstride + ahead), _MM_HINT_T0);
      }
      V wk[NP * VP];
#pragma GCC unroll 16
      for (int v = 0; v < NP * VP; ++v)
        wk[v] = Vec::even(wi + (v / VP) * pstride + (v % VP) * 2 * Vec::kLanes);
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        const V xb = Vec::bcast(x + r * ldx + i);
#pragma GCC unroll 16
        for (int v = 0; v < NP * VP; ++v) acc[r][v] = Vec::fma(acc[r][v], wk[v], xb);
      }
#pragma GCC unroll 16
      for (int v = 0; v < NP * VP; ++v)
        wk[v] = Vec::odd(wi + (v / VP) * pstride + (v % VP) * 2 * Vec::kLanes);
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        const V xb = Vec::bcast(x + r * ldx + i + 1);
#pragma GCC unroll 16
        for (int v = 0; v < NP * VP; ++v) acc[r][v] = Vec::fma(acc[r][v], wk[v], xb);
      }
    }
  } else {
    const float* w = static_cast<const float*>(wv);
    for (int64_t i = k0; i < k1; ++i) {
      const float* wi = w + i * kPanel;
      V wk[NP * VP];
#pragma GCC unroll 16
      for (int v = 0; v < NP * VP; ++v)
        wk[v] = Vec::load(wi + (v / VP) * pstride + (v % VP) * Vec::kLanes);
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        const V xb = Vec::bcast(x + r * ldx + i);
#pragma GCC unroll 16
        for (int v = 0; v < NP * VP; ++v) acc[r][v] = Vec::fma(acc[r][v], wk[v], xb);
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < NP * VP; ++v) Vec::store(y + r * ldy + v * Vec::kLanes, acc[r][v]);
}
