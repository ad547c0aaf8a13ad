// Split-KV attention (flash-decoding): one CTA of 4 warps per (query token, query head, split);
// each warp takes every 4th key of the split with an online softmax, lanes holding head_dim / 32
// contiguous dims of q and of the output; the warps merge in shared memory, and with several
// splits a second kernel merges the splits' partial results from the workspace.
#include "attention_common.cuh"

namespace fastlm::cuda {

namespace {

constexpr int kWarps = 4;
constexpr int kMinKeysPerSplit = 256;

struct Partial {  // workspace layout: o [tokens, heads, splits, D], then m and l [tokens, heads,
                  // splits]
  float* o;
  float* m;
  float* l;
};

__device__ __forceinline__ Partial partial_views(void* ws, int tokens, int heads, int splits,
                                                 int d) {
  float* base = static_cast<float*>(ws);
  const int64_t n = static_cast<int64_t>(tokens) * heads * splits;
  return {base, base + n * d, base + n * d + n};
}

// Sequence of query row t: the s with query_start_loc[s] <= t < query_start_loc[s + 1].
__device__ __forceinline__ int find_seq(const int32_t* qsl, int num_seqs, int t) {
  int lo = 0, hi = num_seqs - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (qsl[mid] <= t)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

template <typename T, int NPL>  // NPL = head_dim / 32 dims per lane
__global__ void __launch_bounds__(kWarps * 32)
    split_kv_kernel(AttentionArgs a, int num_splits, int keys_per_split) {
  constexpr int D = NPL * 32;
  const int t = blockIdx.x, h = blockIdx.y, split = blockIdx.z;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int s = find_seq(a.query_start_loc, a.num_seqs, t);
  const int seq_begin = a.query_start_loc[s];
  const int q_len = a.query_start_loc[s + 1] - seq_begin;
  const int seq_len = seq_len_of(a, s);
  const int pos = seq_len - q_len + (t - seq_begin);
  const KeyRange vis = visible_keys(a, pos, seq_len);
  const int lo = max(vis.lo, split * keys_per_split);
  const int hi = min(vis.hi, (split + 1) * keys_per_split);
  const int kvh = h / (a.num_q_heads / a.num_kv_heads);

  float q[NPL], acc[NPL];
  const T* qp = static_cast<const T*>(a.q) + static_cast<int64_t>(t) * a.q_stride +
                static_cast<int64_t>(h) * D + lane * NPL;
#pragma unroll
  for (int i = 0; i < NPL; ++i) {
    q[i] = to_f32(qp[i]) * a.scale;
    acc[i] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int j = lo + warp; j < hi; j += kWarps) {
    const T* kp = kv_row<T>(a, a.k_cache, a.k, s, seq_begin, j, kvh) + lane * NPL;
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < NPL; ++i) dot += q[i] * to_f32(kp[i]);
    dot = warp_sum(dot);
    const float m_new = fmaxf(m, dot);
    const float alpha = __expf(m - m_new);  // m = -inf the first time: alpha = 0
    const float p = __expf(dot - m_new);
    l = l * alpha + p;
    const T* vp = kv_row<T>(a, a.v_cache, a.v, s, seq_begin, j, kvh) + lane * NPL;
#pragma unroll
    for (int i = 0; i < NPL; ++i) acc[i] = acc[i] * alpha + p * to_f32(vp[i]);
    m = m_new;
  }

  // Merge the warps: each warp's (m, l, acc) rescaled to the block's max.
  __shared__ float sm_m[kWarps], sm_l[kWarps];
  __shared__ float sm_o[kWarps][D];
  if (lane == 0) {
    sm_m[warp] = m;
    sm_l[warp] = l;
  }
#pragma unroll
  for (int i = 0; i < NPL; ++i) sm_o[warp][lane * NPL + i] = acc[i];
  __syncthreads();
  float m_all = -INFINITY;
  for (int w = 0; w < kWarps; ++w) m_all = fmaxf(m_all, sm_m[w]);
  float l_all = 0.0f;
  for (int w = 0; w < kWarps; ++w)
    if (sm_m[w] != -INFINITY) l_all += sm_l[w] * __expf(sm_m[w] - m_all);
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float o = 0.0f;
    for (int w = 0; w < kWarps; ++w)
      if (sm_m[w] != -INFINITY) o += sm_o[w][d] * __expf(sm_m[w] - m_all);
    if (num_splits == 1) {
      T* op = static_cast<T*>(a.out) + static_cast<int64_t>(t) * a.out_stride +
              static_cast<int64_t>(h) * D;
      op[d] = from_f32<T>(l_all > 0.0f ? o / l_all : 0.0f);
    } else {
      const Partial part = partial_views(a.workspace, a.num_tokens, a.num_q_heads, num_splits, D);
      const int64_t idx = (static_cast<int64_t>(t) * a.num_q_heads + h) * num_splits + split;
      part.o[idx * D + d] = o;
      if (d == 0) {
        part.m[idx] = m_all;
        part.l[idx] = l_all;
      }
    }
  }
}

template <typename T>
__global__ void combine_splits_kernel(AttentionArgs a, int num_splits) {
  const int t = blockIdx.x, h = blockIdx.y, d_all = a.head_dim;
  const Partial part = partial_views(a.workspace, a.num_tokens, a.num_q_heads, num_splits, d_all);
  const int64_t base = (static_cast<int64_t>(t) * a.num_q_heads + h) * num_splits;
  float m_all = -INFINITY;
  for (int i = 0; i < num_splits; ++i) m_all = fmaxf(m_all, part.m[base + i]);
  float l_all = 0.0f;
  for (int i = 0; i < num_splits; ++i)
    if (part.m[base + i] != -INFINITY) l_all += part.l[base + i] * __expf(part.m[base + i] - m_all);
  T* op = static_cast<T*>(a.out) + static_cast<int64_t>(t) * a.out_stride +
          static_cast<int64_t>(h) * d_all;
  for (int d = threadIdx.x; d < d_all; d += blockDim.x) {
    float o = 0.0f;
    for (int i = 0; i < num_splits; ++i)
      if (part.m[base + i] != -INFINITY)
        o += part.o[(base + i) * d_all + d] * __expf(part.m[base + i] - m_all);
    op[d] = from_f32<T>(l_all > 0.0f ? o / l_all : 0.0f);
  }
}

int num_sms() {
  static const int n = [] {
    int dev = 0, sms = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    return sms > 0 ? sms : 1;
  }();
  return n;
}

int max_splits(int max_seq_len) {
  return std::max(1, (max_seq_len + kMinKeysPerSplit - 1) / kMinKeysPerSplit);
}

}  // namespace

size_t attention_workspace_bytes(int num_tokens, int num_q_heads, int head_dim, int max_seq_len) {
  const size_t n = static_cast<size_t>(num_tokens) * num_q_heads * max_splits(max_seq_len);
  return n * (static_cast<size_t>(head_dim) + 2) * sizeof(float);
}

Status attention_split_kv(DType dtype, const AttentionArgs& a, cudaStream_t stream) {
  if (Status st = check_attention_args(a, "attention_split_kv"); st != Status::kOk) return st;
  if (a.num_tokens == 0) return Status::kOk;
  const int d = a.head_dim;
  if (d != 32 && d != 64 && d != 128 && d != 256)
    return fail(Status::kUnsupported, "attention_split_kv: head_dim must be 32/64/128/256");
  // Enough CTAs to fill the GPU twice over, no split shorter than kMinKeysPerSplit keys.
  const int64_t ctas = static_cast<int64_t>(a.num_tokens) * a.num_q_heads;
  int splits = static_cast<int>(
      std::min<int64_t>(max_splits(a.max_seq_len), std::max<int64_t>(1, 2 * num_sms() / ctas)));
  if (a.num_splits > 0) splits = a.num_splits;
  const size_t need = static_cast<size_t>(ctas) * splits * (d + 2) * sizeof(float);
  const bool fits = a.workspace != nullptr && a.workspace_bytes >= need;
  FASTLM_CUDA_REQUIRE(a.num_splits <= 1 || fits,
                      "attention_split_kv: the workspace cannot hold num_splits partial results");
  if (!fits) splits = 1;
  // A fixed split count divides max_seq_len as it comes (keys past a sequence's end are skipped).
  const int keys_per_split = (std::max(a.max_seq_len, 1) + splits - 1) / splits;
  const dim3 grid(a.num_tokens, a.num_q_heads, splits);
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    switch (d) {
      case 32:
        split_kv_kernel<T, 1><<<grid, kWarps * 32, 0, stream>>>(a, splits, keys_per_split);
        break;
      case 64:
        split_kv_kernel<T, 2><<<grid, kWarps * 32, 0, stream>>>(a, splits, keys_per_split);
        break;
      case 128:
        split_kv_kernel<T, 4><<<grid, kWarps * 32, 0, stream>>>(a, splits, keys_per_split);
        break;
      default:
        split_kv_kernel<T, 8><<<grid, kWarps * 32, 0, stream>>>(a, splits, keys_per_split);
        break;
    }
    if (splits > 1)
      combine_splits_kernel<T><<<dim3(a.num_tokens, a.num_q_heads), 128, 0, stream>>>(a, splits);
    return check_launch("attention_split_kv");
  });
}

}  // namespace fastlm::cuda
