// SiLU*mul, GELU (erf / tanh), bias add, embedding gather and row gather: memory-bound loops,
// grid-stride, float32 arithmetic.
#include "common.cuh"
#include "fastlm_cuda/kernels.h"

namespace fastlm::cuda {

namespace {

constexpr int kThreads = 256;

unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65536));
}

#define FASTLM_GRID_STRIDE(i, n)                                                         \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

template <typename T>
__global__ void silu_mul_kernel(const T* __restrict__ gate_up, T* __restrict__ out, int64_t m,
                                int64_t inter) {
  FASTLM_GRID_STRIDE(idx, m * inter) {
    const int64_t r = idx / inter, c = idx % inter;
    const float g = to_f32(gate_up[r * 2 * inter + c]);
    const float u = to_f32(gate_up[r * 2 * inter + inter + c]);
    out[idx] = from_f32<T>(g / (1.0f + __expf(-g)) * u);
  }
}

template <typename T>
__global__ void gelu_kernel(T* __restrict__ x, int64_t n, bool tanh_approximation) {
  FASTLM_GRID_STRIDE(i, n) {
    const float v = to_f32(x[i]);
    float y;
    if (tanh_approximation) {
      const float inner = 0.7978845608028654f * (v + 0.044715f * v * v * v);
      y = 0.5f * v * (1.0f + tanhf(inner));
    } else {
      y = 0.5f * v * (1.0f + erff(v * 0.7071067811865476f));
    }
    x[i] = from_f32<T>(y);
  }
}

template <typename T>
__global__ void add_bias_kernel(T* __restrict__ x, const T* __restrict__ bias, int64_t m,
                                int64_t n) {
  FASTLM_GRID_STRIDE(i, m * n) { x[i] = from_f32<T>(to_f32(x[i]) + to_f32(bias[i % n])); }
}

// One block per output row.
template <typename T>
__global__ void embedding_kernel(const T* __restrict__ table, int64_t vocab,
                                 const int32_t* __restrict__ ids, T* __restrict__ out,
                                 int64_t hidden) {
  const int32_t id = ids[blockIdx.x];
  T* dst = out + blockIdx.x * hidden;
  const bool valid = id >= 0 && id < vocab;
  const T* src = table + (valid ? static_cast<int64_t>(id) * hidden : 0);
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x)
    dst[i] = valid ? src[i] : from_f32<T>(0.0f);
}

template <typename T>
__global__ void gather_rows_kernel(const T* __restrict__ x, int64_t x_stride,
                                   const int32_t* __restrict__ rows, T* __restrict__ out,
                                   int64_t hidden) {
  const T* src = x + static_cast<int64_t>(rows[blockIdx.x]) * x_stride;
  T* dst = out + blockIdx.x * hidden;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = src[i];
}

}  // namespace

Status silu_mul(DType dtype, const void* gate_up, void* out, int64_t m, int64_t inter,
                cudaStream_t stream) {
  FASTLM_CUDA_REQUIRE(m >= 0 && inter >= 0, "silu_mul: bad shape");
  if (m * inter == 0) return Status::kOk;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    silu_mul_kernel<T><<<blocks_for(m * inter), kThreads, 0, stream>>>(
        static_cast<const T*>(gate_up), static_cast<T*>(out), m, inter);
    return check_launch("silu_mul");
  });
}

Status gelu(DType dtype, void* x, int64_t n, bool tanh_approximation, cudaStream_t stream) {
  FASTLM_CUDA_REQUIRE(n >= 0, "gelu: bad size");
  if (n == 0) return Status::kOk;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    gelu_kernel<T>
        <<<blocks_for(n), kThreads, 0, stream>>>(static_cast<T*>(x), n, tanh_approximation);
    return check_launch("gelu");
  });
}

Status add_bias(DType dtype, void* x, const void* bias, int64_t m, int64_t n, cudaStream_t stream) {
  FASTLM_CUDA_REQUIRE(m >= 0 && n >= 0, "add_bias: bad shape");
  if (m * n == 0) return Status::kOk;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    add_bias_kernel<T><<<blocks_for(m * n), kThreads, 0, stream>>>(
        static_cast<T*>(x), static_cast<const T*>(bias), m, n);
    return check_launch("add_bias");
  });
}

Status embedding(DType dtype, const void* table, int64_t vocab, const int32_t* ids, void* out,
                 int64_t n, int64_t hidden, cudaStream_t stream) {
  FASTLM_CUDA_REQUIRE(n >= 0 && hidden > 0 && vocab > 0, "embedding: bad shape");
  if (n == 0) return Status::kOk;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    embedding_kernel<T><<<n, kThreads, 0, stream>>>(static_cast<const T*>(table), vocab, ids,
                                                    static_cast<T*>(out), hidden);
    return check_launch("embedding");
  });
}

Status gather_rows(DType dtype, const void* x, int64_t x_stride, const int32_t* rows, void* out,
                   int64_t n, int64_t hidden, cudaStream_t stream) {
  FASTLM_CUDA_REQUIRE(n >= 0 && hidden > 0 && x_stride >= hidden, "gather_rows: bad shape");
  if (n == 0) return Status::kOk;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    gather_rows_kernel<T><<<n, kThreads, 0, stream>>>(static_cast<const T*>(x), x_stride, rows,
                                                      static_cast<T*>(out), hidden);
    return check_launch("gather_rows");
  });
}

}  // namespace fastlm::cuda
