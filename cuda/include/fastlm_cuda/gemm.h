#pragma once
// Linear layers through cuBLASLt: y[m, n] = x[m, k] w[n, k]^T (+ bias[n]) (+ GELU), weights
// stored [out, in] as checkpoints hold them; x, w, y, bias in one dtype, float32 accumulate
// (no TF32 for f32). The algorithm is chosen once per (dtype, m, n, k, epilogue) by cuBLASLt's
// heuristic and cached with its descriptors; one 32 MiB workspace per device. Thread-safe.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "fastlm_cuda/status.h"

namespace fastlm::cuda {

enum class GemmEpilogue {
  kNone,
  kGeluTanh,  // cuBLASLt's GELU epilogue is the tanh approximation
};

// bias may be null. kUnsupported where cuBLASLt has no algorithm for the shape.
Status gemm(DType dtype, const void* x, const void* w, const void* bias, void* y, int64_t m,
            int64_t n, int64_t k, GemmEpilogue epilogue, cudaStream_t stream);
// As gemm, with y (and bias) in out_dtype: f16/bf16 inputs with f32 output give the lm_head's
// f32 logits without a conversion pass.
Status gemm_out(DType dtype, DType out_dtype, const void* x, const void* w, const void* bias,
                void* y, int64_t m, int64_t n, int64_t k, GemmEpilogue epilogue,
                cudaStream_t stream);

// Number of (shape, epilogue) entries in the algorithm cache (tests: one entry per shape).
int gemm_cached_algorithms();

}  // namespace fastlm::cuda
