// Pooling for embedding models: last token, mean or first (CLS) row of each sequence, optionally
// L2-normalized, into float32. One block per sequence; threads stride over the hidden size.
#include "common.cuh"
#include "fastlm_cuda/kernels.h"

namespace fastlm::cuda {

namespace {

template <typename T>
__global__ void pool_kernel(const T* __restrict__ h, const int32_t* __restrict__ query_start_loc,
                            int64_t hidden, PoolingType type, bool normalize,
                            float* __restrict__ out) {
  __shared__ float scratch[32];
  const int32_t begin = query_start_loc[blockIdx.x], end = query_start_loc[blockIdx.x + 1];
  float* o = out + blockIdx.x * hidden;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
    float v = 0.0f;
    switch (type) {
      case PoolingType::kLast:
        v = end > begin ? to_f32(h[static_cast<int64_t>(end - 1) * hidden + i]) : 0.0f;
        break;
      case PoolingType::kCls:
        v = end > begin ? to_f32(h[static_cast<int64_t>(begin) * hidden + i]) : 0.0f;
        break;
      case PoolingType::kMean:
        for (int32_t r = begin; r < end; ++r) v += to_f32(h[static_cast<int64_t>(r) * hidden + i]);
        v = end > begin ? v / static_cast<float>(end - begin) : 0.0f;
        break;
    }
    o[i] = v;
    ss += v * v;
  }
  if (!normalize) return;
  // torch.nn.functional.normalize: x / max(||x||, 1e-12).
  const float inv = 1.0f / fmaxf(sqrtf(block_sum(ss, scratch)), 1e-12f);
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) o[i] *= inv;
}

}  // namespace

Status pool(DType dtype, const void* hidden_states, const int32_t* query_start_loc, int num_seqs,
            int64_t hidden, PoolingType type, bool normalize, float* out, cudaStream_t stream) {
  FASTLM_CUDA_REQUIRE(num_seqs >= 0 && hidden > 0, "pool: bad shape");
  if (num_seqs == 0) return Status::kOk;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    pool_kernel<T><<<num_seqs, 256, 0, stream>>>(static_cast<const T*>(hidden_states),
                                                 query_start_loc, hidden, type, normalize, out);
    return check_launch("pool");
  });
}

}  // namespace fastlm::cuda
