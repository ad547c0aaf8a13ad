#pragma once
// Shared device helpers: element conversions, warp/block reductions, dtype dispatch and launch
// checking. Internal to cuda/src.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "fail.h"
#include "fastlm_cuda/status.h"

namespace fastlm::cuda {
// kOk, or kCudaError with cudaGetLastError's text (prefixed with `what`).
Status check_launch(const char* what);

#define FASTLM_CUDA_REQUIRE(cond, msg)                                       \
  do {                                                                       \
    if (!(cond)) return ::fastlm::cuda::fail(Status::kInvalidArgument, msg); \
  } while (0)

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_f32<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

struct SumOp {
  static constexpr float kIdentity = 0.0f;
  __device__ __forceinline__ float warp(float v) const { return warp_sum(v); }
};
struct MaxOp {
  static constexpr float kIdentity = -INFINITY;
  __device__ __forceinline__ float warp(float v) const { return warp_max(v); }
};

// Reduction over the block (blockDim.x a multiple of 32, <= 1024); every thread gets the result.
// `scratch` holds 32 floats of shared memory; the call ends with a barrier, so it can be reused.
template <typename Op>
__device__ __forceinline__ float block_reduce(float v, float* scratch, Op op) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = op.warp(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int nwarps = blockDim.x >> 5;
  v = op.warp(lane < nwarps ? scratch[lane] : Op::kIdentity);
  __syncthreads();
  return v;
}
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  return block_reduce(v, scratch, SumOp{});
}
__device__ __forceinline__ float block_max(float v, float* scratch) {
  return block_reduce(v, scratch, MaxOp{});
}

template <typename T>
struct TypeTag {
  using type = T;
};

// Runs f(TypeTag<T>{}) with T the C++ type of `dtype` (C++17: nvcc's dialect in CMake 3.25).
template <typename F>
Status dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kF32:
      return f(TypeTag<float>{});
    case DType::kF16:
      return f(TypeTag<__half>{});
    case DType::kBF16:
      return f(TypeTag<__nv_bfloat16>{});
  }
  return fail(Status::kInvalidArgument, "unknown dtype");
}

inline unsigned ceil_div(int64_t a, int64_t b) { return static_cast<unsigned>((a + b - 1) / b); }

}  // namespace fastlm::cuda
