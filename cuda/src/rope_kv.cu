// RoPE on q and k fused with the paged KV-cache write: one block per token; the rotated k goes
// to the cache from registers, so k is read once.
#include "common.cuh"
#include "fastlm_cuda/kernels.h"

namespace fastlm::cuda {

namespace {

// Rotates pairs (j, j + half) of one head in place; lanes of the block stride over
// heads x half. Dims past rot_dim are left as they are (partial rotary).
template <typename T>
__device__ __forceinline__ void rotate(T* x, int64_t head_stride, int heads, int half,
                                       const float* cos, const float* sin) {
  for (int i = threadIdx.x; i < heads * half; i += blockDim.x) {
    const int h = i / half, j = i % half;
    T* xh = x + h * head_stride;
    const float a = to_f32(xh[j]), b = to_f32(xh[j + half]);
    xh[j] = from_f32<T>(a * cos[j] - b * sin[j]);
    xh[j + half] = from_f32<T>(b * cos[j] + a * sin[j]);
  }
}

template <typename T>
__global__ void rope_write_kv_kernel(RopeKvArgs a) {
  const int64_t t = blockIdx.x;
  const int half = a.rot_dim / 2;
  const float* cos = a.cos_sin + static_cast<int64_t>(a.positions[t]) * a.rot_dim;
  const float* sin = cos + half;
  if (a.q != nullptr)
    rotate(static_cast<T*>(a.q) + t * a.q_stride, a.head_dim, a.num_q_heads, half, cos, sin);
  T* k = static_cast<T*>(a.k) + t * a.k_stride;
  rotate(k, a.head_dim, a.num_kv_heads, half, cos, sin);
  if (a.k_cache == nullptr) return;
  const int64_t slot = a.slot_mapping[t];
  if (slot < 0) return;  // padding token
  __syncthreads();       // the rotated k of other threads
  const int width = a.num_kv_heads * a.head_dim;
  const T* v = static_cast<const T*>(a.v) + t * a.v_stride;
  T* kc = static_cast<T*>(a.k_cache) + slot * width;
  T* vc = static_cast<T*>(a.v_cache) + slot * width;
  for (int i = threadIdx.x; i < width; i += blockDim.x) {
    kc[i] = k[i];
    vc[i] = v[i];
  }
}

}  // namespace

Status rope_write_kv(DType dtype, const RopeKvArgs& a, cudaStream_t stream) {
  FASTLM_CUDA_REQUIRE(
      a.tokens >= 0 && a.k != nullptr && a.positions != nullptr && a.cos_sin != nullptr,
      "rope_write_kv: k, positions and cos_sin are required");
  FASTLM_CUDA_REQUIRE(
      a.head_dim > 0 && a.rot_dim > 0 && a.rot_dim % 2 == 0 && a.rot_dim <= a.head_dim,
      "rope_write_kv: rot_dim must be even and in (0, head_dim]");
  FASTLM_CUDA_REQUIRE(a.k_stride >= a.num_kv_heads * a.head_dim &&
                          (a.q == nullptr || a.q_stride >= a.num_q_heads * a.head_dim),
                      "rope_write_kv: a row stride is shorter than its heads");
  FASTLM_CUDA_REQUIRE(
      a.k_cache == nullptr || (a.v_cache != nullptr && a.v != nullptr && a.slot_mapping != nullptr),
      "rope_write_kv: a cache write needs v, v_cache and slot_mapping");
  if (a.tokens == 0) return Status::kOk;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    rope_write_kv_kernel<T><<<a.tokens, 256, 0, stream>>>(a);
    return check_launch("rope_write_kv");
  });
}

}  // namespace fastlm::cuda
