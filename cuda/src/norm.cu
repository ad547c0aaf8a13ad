// RMSNorm, fused residual add + RMSNorm, per-head RMSNorm (Qwen3 q/k) and LayerNorm. One block
// per row; the row is read twice (statistics, then scale), the second read mostly from L1/L2.
#include "common.cuh"
#include "fastlm_cuda/kernels.h"

namespace fastlm::cuda {

namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void rms_norm_kernel(const T* __restrict__ x, int64_t x_stride, const T* __restrict__ w,
                                float eps, T* __restrict__ y, int64_t hidden) {
  __shared__ float scratch[32];
  const T* xr = x + blockIdx.x * x_stride;
  T* yr = y + blockIdx.x * hidden;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
    const float v = to_f32(xr[i]);
    ss += v * v;
  }
  const float inv = rsqrtf(block_sum(ss, scratch) / static_cast<float>(hidden) + eps);
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x)
    yr[i] = from_f32<T>(to_f32(xr[i]) * inv * to_f32(w[i]));
}

template <typename T>
__global__ void add_rms_norm_kernel(T* __restrict__ residual, const T* __restrict__ x,
                                    const T* __restrict__ w, float eps, T* __restrict__ y,
                                    int64_t hidden) {
  __shared__ float scratch[32];
  T* res = residual + blockIdx.x * hidden;
  const T* xr = x + blockIdx.x * hidden;
  T* yr = y + blockIdx.x * hidden;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
    // The residual stream is stored in T: normalize what was stored, as the next add reads it.
    const T sum = from_f32<T>(to_f32(res[i]) + to_f32(xr[i]));
    res[i] = sum;
    const float v = to_f32(sum);
    ss += v * v;
  }
  const float inv = rsqrtf(block_sum(ss, scratch) / static_cast<float>(hidden) + eps);
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x)
    yr[i] = from_f32<T>(to_f32(res[i]) * inv * to_f32(w[i]));
}

// One warp per (row, head).
template <typename T>
__global__ void head_rms_norm_kernel(T* __restrict__ x, int64_t x_stride, int heads, int head_dim,
                                     const T* __restrict__ w, float eps, int64_t count) {
  const int64_t item = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (item >= count) return;
  const int lane = threadIdx.x & 31;
  T* xh = x + (item / heads) * x_stride + (item % heads) * head_dim;
  float ss = 0.0f;
  for (int i = lane; i < head_dim; i += 32) {
    const float v = to_f32(xh[i]);
    ss += v * v;
  }
  const float inv = rsqrtf(warp_sum(ss) / static_cast<float>(head_dim) + eps);
  for (int i = lane; i < head_dim; i += 32) xh[i] = from_f32<T>(to_f32(xh[i]) * inv * to_f32(w[i]));
}

template <typename T>
__global__ void layer_norm_kernel(const T* __restrict__ x, const T* __restrict__ residual,
                                  const T* __restrict__ w, const T* __restrict__ b, float eps,
                                  T* __restrict__ y, int64_t hidden) {
  __shared__ float scratch[32];
  const T* xr = x + blockIdx.x * hidden;
  const T* rr = residual != nullptr ? residual + blockIdx.x * hidden : nullptr;
  T* yr = y + blockIdx.x * hidden;
  auto load = [&](int64_t i) {
    return rr != nullptr ? to_f32(from_f32<T>(to_f32(xr[i]) + to_f32(rr[i]))) : to_f32(xr[i]);
  };
  float s = 0.0f;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) s += load(i);
  const float mean = block_sum(s, scratch) / static_cast<float>(hidden);
  float var = 0.0f;  // two passes: E[(x - mean)^2] does not cancel as E[x^2] - mean^2 does
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
    const float d = load(i) - mean;
    var += d * d;
  }
  const float inv = rsqrtf(block_sum(var, scratch) / static_cast<float>(hidden) + eps);
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
    const float v = (load(i) - mean) * inv * to_f32(w[i]);
    yr[i] = from_f32<T>(b != nullptr ? v + to_f32(b[i]) : v);
  }
}

}  // namespace

Status rms_norm(DType dtype, const void* x, int64_t x_stride, const void* w, float eps, void* y,
                int64_t rows, int64_t hidden, cudaStream_t stream) {
  FASTLM_CUDA_REQUIRE(rows >= 0 && hidden > 0 && x_stride >= hidden, "rms_norm: bad shape");
  if (rows == 0) return Status::kOk;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    rms_norm_kernel<T><<<rows, kThreads, 0, stream>>>(static_cast<const T*>(x), x_stride,
                                                      static_cast<const T*>(w), eps,
                                                      static_cast<T*>(y), hidden);
    return check_launch("rms_norm");
  });
}

Status add_rms_norm(DType dtype, void* residual, const void* x, const void* w, float eps, void* y,
                    int64_t rows, int64_t hidden, cudaStream_t stream) {
  FASTLM_CUDA_REQUIRE(rows >= 0 && hidden > 0, "add_rms_norm: bad shape");
  if (rows == 0) return Status::kOk;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    add_rms_norm_kernel<T>
        <<<rows, kThreads, 0, stream>>>(static_cast<T*>(residual), static_cast<const T*>(x),
                                        static_cast<const T*>(w), eps, static_cast<T*>(y), hidden);
    return check_launch("add_rms_norm");
  });
}

Status head_rms_norm(DType dtype, void* x, int64_t x_stride, int heads, int head_dim, const void* w,
                     float eps, int64_t rows, cudaStream_t stream) {
  FASTLM_CUDA_REQUIRE(rows >= 0 && heads > 0 && head_dim > 0 && x_stride >= heads * head_dim,
                      "head_rms_norm: bad shape");
  const int64_t count = rows * heads;
  if (count == 0) return Status::kOk;
  constexpr int kWarps = 8;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    head_rms_norm_kernel<T><<<ceil_div(count, kWarps), kWarps * 32, 0, stream>>>(
        static_cast<T*>(x), x_stride, heads, head_dim, static_cast<const T*>(w), eps, count);
    return check_launch("head_rms_norm");
  });
}

Status layer_norm(DType dtype, const void* x, const void* residual, const void* w, const void* b,
                  float eps, void* y, int64_t rows, int64_t hidden, cudaStream_t stream) {
  FASTLM_CUDA_REQUIRE(rows >= 0 && hidden > 0, "layer_norm: bad shape");
  if (rows == 0) return Status::kOk;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    layer_norm_kernel<T><<<rows, kThreads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<const T*>(residual), static_cast<const T*>(w),
        static_cast<const T*>(b), eps, static_cast<T*>(y), hidden);
    return check_launch("layer_norm");
  });
}

}  // namespace fastlm::cuda
