// Sampling kernels. One CTA (1024 threads) per row for sample() and compute_logprobs(): the row
// (vocab floats, ~600 KB for 150k tokens) is read in several passes from L2. Thresholds for top-k
// and top-p are found exactly by bisection on the order-preserving bit pattern of the scaled
// logits (32 passes, each a count or a mass over the row), so no sort and no workspace.
#include "common.cuh"
#include "fastlm_cuda/sampling.h"

namespace fastlm::cuda {

namespace {

constexpr int kThreads = 1024;

// Philox4x32-10 (Salmon et al., SC'11): counter (offset, 0), key = seed.
__device__ __forceinline__ uint4 philox4x32_10(uint64_t seed, uint64_t offset) {
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  uint32_t c0 = static_cast<uint32_t>(offset), c1 = static_cast<uint32_t>(offset >> 32), c2 = 0,
           c3 = 0;
#pragma unroll
  for (int r = 0; r < 10; ++r) {
    const uint32_t lo0 = 0xD2511F53u * c0, hi0 = __umulhi(0xD2511F53u, c0);
    const uint32_t lo1 = 0xCD9E8D57u * c2, hi1 = __umulhi(0xCD9E8D57u, c2);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return make_uint4(c0, c1, c2, c3);
}

__device__ __forceinline__ float uniform_from(uint4 r) {
  return static_cast<float>(r.x >> 8) * (1.0f / 16777216.0f);  // 24 bits: [0, 1)
}

// Order-preserving map float -> uint32 (larger float, larger key).
__device__ __forceinline__ uint32_t order_key(float x) {
  const uint32_t b = __float_as_uint(x);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Block-wide count of row elements whose key is >= k (as float, exact below 2^24).
template <typename Pred>
__device__ float block_count(const float* row, int vocab, Pred keep, float* scratch) {
  float c = 0.0f;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) c += keep(row[i]) ? 1.0f : 0.0f;
  return block_sum(c, scratch);
}

// The largest key K with f(K) >= target, f non-increasing in K (a count or a mass of the
// elements with key >= K). f(0) must be >= target.
template <typename F>
__device__ uint32_t bisect_key(F f, float target) {
  uint32_t prefix = 0;
  for (int bit = 31; bit >= 0; --bit) {
    const uint32_t cand = prefix | (1u << bit);
    if (f(cand) >= target) prefix = cand;
  }
  return prefix;
}

__global__ void __launch_bounds__(kThreads) sample_kernel(SampleArgs a) {
  __shared__ float scratch[32];
  __shared__ float scan[kThreads];
  __shared__ int winner;
  __shared__ int fallback;
  const int r = blockIdx.x;
  const float* row = a.logits + static_cast<int64_t>(r) * a.vocab;
  const int vocab = a.vocab;

  // Greedy and the maximum: argmax, lowest id on ties.
  float best = -INFINITY;
  int best_i = vocab;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x)
    if (row[i] > best) {  // i increases: the first maximum of this thread's elements
      best = row[i];
      best_i = i;
    }
  const float max_logit = block_max(best, scratch);
  if (threadIdx.x == 0) winner = vocab;
  __syncthreads();
  if (best == max_logit) atomicMin(&winner, best_i);
  __syncthreads();
  const float temp = a.temperature != nullptr ? a.temperature[r] : 0.0f;
  if (!(temp > 0.0f) || max_logit == -INFINITY) {
    if (threadIdx.x == 0) a.sampled[r] = winner < vocab ? winner : 0;
    return;
  }

  // y = (x - max) / T <= 0; the kept set is always {y >= lower}.
  const float inv_t = 1.0f / temp;
  auto y_of = [&](float x) { return (x - max_logit) * inv_t; };
  float lower = -INFINITY;
  const float min_p = a.min_p != nullptr ? a.min_p[r] : 0.0f;
  if (min_p > 0.0f) lower = logf(min_p);  // p >= min_p * p_max  <=>  y >= ln(min_p)
  const int top_k = a.top_k != nullptr ? a.top_k[r] : 0;
  if (top_k > 0 && top_k < vocab) {
    const uint32_t k = bisect_key(
        [&](uint32_t key) {
          return block_count(
              row, vocab, [&](float x) { return order_key(y_of(x)) >= key; }, scratch);
        },
        static_cast<float>(top_k));
    // The k-th largest y itself (keys of finite floats map back exactly).
    const float kth = __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
    lower = fmaxf(lower, kth);
  }
  auto mass_from = [&](uint32_t key) {
    float m = 0.0f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
      const float y = y_of(row[i]);
      if (y >= lower && order_key(y) >= key) m += __expf(y);
    }
    return block_sum(m, scratch);
  };
  const float top_p = a.top_p != nullptr ? a.top_p[r] : 1.0f;
  if (top_p < 1.0f) {
    const float kept_mass = mass_from(0);
    const uint32_t k = bisect_key(mass_from, top_p * kept_mass);
    lower = fmaxf(lower, __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k));
  }

  // Inverse CDF over the kept tokens in id order: each thread owns a contiguous chunk.
  const int chunk = (vocab + kThreads - 1) / kThreads;
  const int begin = min(vocab, static_cast<int>(threadIdx.x) * chunk);
  const int end = min(vocab, begin + chunk);
  float local = 0.0f;
  int last_kept = -1;
  for (int i = begin; i < end; ++i) {
    const float y = y_of(row[i]);
    if (y >= lower) {
      local += __expf(y);
      last_kept = i;
    }
  }
  scan[threadIdx.x] = local;
  __syncthreads();
  for (int off = 1; off < kThreads; off <<= 1) {  // Hillis-Steele inclusive scan
    const float add = threadIdx.x >= off ? scan[threadIdx.x - off] : 0.0f;
    __syncthreads();
    scan[threadIdx.x] += add;
    __syncthreads();
  }
  const float total = scan[kThreads - 1];
  const float before = scan[threadIdx.x] - local;
  const uint4 bits =
      philox4x32_10(a.seeds != nullptr ? a.seeds[r] : 0, a.offsets != nullptr ? a.offsets[r] : 0);
  const float target = uniform_from(bits) * total;
  if (threadIdx.x == 0) {
    winner = vocab;
    fallback = -1;
  }
  __syncthreads();
  if (last_kept >= 0) atomicMax(&fallback, last_kept);
  if (local > 0.0f && target >= before && target < before + local) {
    float acc = before;
    int pick = last_kept;
    for (int i = begin; i < end; ++i) {
      const float y = y_of(row[i]);
      if (y < lower) continue;
      acc += __expf(y);
      if (acc > target) {
        pick = i;
        break;
      }
    }
    atomicMin(&winner, pick);
  }
  __syncthreads();
  // Rounding left the target past every chunk: the last kept token.
  if (threadIdx.x == 0) a.sampled[r] = winner < vocab ? winner : max(fallback, 0);
}

__global__ void __launch_bounds__(kThreads)
    logprobs_kernel(const float* logits, int vocab, const int32_t* token_ids, int top_n,
                    float* token_logprob, int32_t* token_rank, int32_t* top_ids,
                    float* top_logprobs) {
  __shared__ float scratch[32];
  __shared__ unsigned long long best_packed;
  const int r = blockIdx.x;
  const float* row = logits + static_cast<int64_t>(r) * vocab;
  float mx = -INFINITY;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) mx = fmaxf(mx, row[i]);
  mx = block_max(mx, scratch);
  float se = 0.0f;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) se += __expf(row[i] - mx);
  const float lse = mx + logf(block_sum(se, scratch));
  if (token_ids != nullptr) {
    const int t = token_ids[r];
    const float xt = row[t];
    float greater = 0.0f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) greater += row[i] > xt ? 1.0f : 0.0f;
    greater = block_sum(greater, scratch);
    if (threadIdx.x == 0) {
      token_logprob[r] = xt - lse;
      token_rank[r] = static_cast<int32_t>(greater) + 1;
    }
  }
  // Top-n by n arg-max passes, each over the elements after the previous pick in
  // (logit descending, id ascending) order. Packed (key, ~id) so one atomicMax picks both.
  float prev_x = INFINITY;
  int prev_i = -1;
  for (int n = 0; n < top_n; ++n) {
    if (threadIdx.x == 0) best_packed = 0;
    __syncthreads();
    unsigned long long mine = 0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
      const float x = row[i];
      if (x < prev_x || (x == prev_x && i > prev_i)) {
        const unsigned long long p =
            (static_cast<unsigned long long>(order_key(x)) << 32) | (0xffffffffu - i);
        if (p > mine) mine = p;
      }
    }
    atomicMax(&best_packed, mine);
    __syncthreads();
    const int id = static_cast<int>(0xffffffffu - static_cast<uint32_t>(best_packed));
    prev_i = id;
    prev_x = row[id];
    if (threadIdx.x == 0) {
      top_ids[static_cast<int64_t>(r) * top_n + n] = id;
      top_logprobs[static_cast<int64_t>(r) * top_n + n] = prev_x - lse;
    }
    __syncthreads();
  }
}

__global__ void penalties_kernel(float* logits, int vocab, PenaltyArgs a) {
  const int r = blockIdx.x;
  const float rep = a.repetition != nullptr ? a.repetition[r] : 1.0f;
  const float freq = a.frequency != nullptr ? a.frequency[r] : 0.0f;
  const float pres = a.presence != nullptr ? a.presence[r] : 0.0f;
  float* row = logits + static_cast<int64_t>(r) * vocab;
  for (int e = a.offsets[r] + threadIdx.x; e < a.offsets[r + 1]; e += blockDim.x) {
    const int t = a.token_ids[e];
    const int count = a.output_counts != nullptr ? a.output_counts[e] : 0;
    const bool prompt = a.in_prompt != nullptr && a.in_prompt[e] != 0;
    float x = row[t];
    if (rep != 1.0f && (count > 0 || prompt)) x = x > 0.0f ? x / rep : x * rep;
    x -= freq * static_cast<float>(count) + (count > 0 ? pres : 0.0f);
    row[t] = x;
  }
}

__global__ void logit_bias_kernel(float* logits, int vocab, const int32_t* offsets,
                                  const int32_t* token_ids, const float* values) {
  const int r = blockIdx.x;
  float* row = logits + static_cast<int64_t>(r) * vocab;
  for (int e = offsets[r] + threadIdx.x; e < offsets[r + 1]; e += blockDim.x)
    row[token_ids[e]] += values[e];
}

__global__ void bitmask_kernel(float* logits, int vocab, const int32_t* bitmask,
                               const int32_t* mask_index) {
  const int r = blockIdx.y;
  const int idx = mask_index[r];
  if (idx < 0) return;
  const int words = (vocab + 31) / 32;
  const int32_t* mask = bitmask + static_cast<int64_t>(idx) * words;
  for (int v = blockIdx.x * blockDim.x + threadIdx.x; v < vocab; v += gridDim.x * blockDim.x)
    if (((static_cast<uint32_t>(mask[v >> 5]) >> (v & 31)) & 1u) == 0)
      logits[static_cast<int64_t>(r) * vocab + v] = -INFINITY;
}

__global__ void philox_kernel(const uint64_t* seeds, const uint64_t* offsets, int n, float* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = uniform_from(philox4x32_10(seeds[i], offsets[i]));
}

}  // namespace

Status apply_penalties(float* logits, int batch, int vocab, const PenaltyArgs& a,
                       cudaStream_t stream) {
  FASTLM_CUDA_REQUIRE(batch >= 0 && vocab > 0 && a.offsets != nullptr && a.token_ids != nullptr,
                      "apply_penalties: offsets and token_ids are required");
  if (batch == 0) return Status::kOk;
  penalties_kernel<<<batch, 256, 0, stream>>>(logits, vocab, a);
  return check_launch("apply_penalties");
}

Status apply_logit_bias(float* logits, int batch, int vocab, const int32_t* offsets,
                        const int32_t* token_ids, const float* values, cudaStream_t stream) {
  FASTLM_CUDA_REQUIRE(batch >= 0 && vocab > 0 && offsets != nullptr, "apply_logit_bias: bad args");
  if (batch == 0) return Status::kOk;
  logit_bias_kernel<<<batch, 256, 0, stream>>>(logits, vocab, offsets, token_ids, values);
  return check_launch("apply_logit_bias");
}

Status apply_token_bitmask(float* logits, int batch, int vocab, const int32_t* bitmask,
                           const int32_t* mask_index, cudaStream_t stream) {
  FASTLM_CUDA_REQUIRE(batch >= 0 && vocab > 0 && bitmask != nullptr && mask_index != nullptr,
                      "apply_token_bitmask: bad args");
  if (batch == 0) return Status::kOk;
  const dim3 grid(std::min((vocab + 255) / 256, 64), batch);
  bitmask_kernel<<<grid, 256, 0, stream>>>(logits, vocab, bitmask, mask_index);
  return check_launch("apply_token_bitmask");
}

Status sample(const SampleArgs& a, cudaStream_t stream) {
  FASTLM_CUDA_REQUIRE(a.batch >= 0 && a.vocab > 0 && a.logits != nullptr && a.sampled != nullptr,
                      "sample: logits and sampled are required");
  if (a.batch == 0) return Status::kOk;
  sample_kernel<<<a.batch, kThreads, 0, stream>>>(a);
  return check_launch("sample");
}

Status compute_logprobs(const float* logits, int batch, int vocab, const int32_t* token_ids,
                        int top_n, float* token_logprob, int32_t* token_rank, int32_t* top_ids,
                        float* top_logprobs, cudaStream_t stream) {
  FASTLM_CUDA_REQUIRE(batch >= 0 && vocab > 0 && top_n >= 0 && top_n <= 20 && top_n <= vocab,
                      "compute_logprobs: top_n must be in [0, min(20, vocab)]");
  FASTLM_CUDA_REQUIRE(token_ids == nullptr || (token_logprob != nullptr && token_rank != nullptr),
                      "compute_logprobs: token outputs are required with token_ids");
  FASTLM_CUDA_REQUIRE(top_n == 0 || (top_ids != nullptr && top_logprobs != nullptr),
                      "compute_logprobs: top outputs are required when top_n > 0");
  if (batch == 0) return Status::kOk;
  logprobs_kernel<<<batch, kThreads, 0, stream>>>(logits, vocab, token_ids, top_n, token_logprob,
                                                  token_rank, top_ids, top_logprobs);
  return check_launch("compute_logprobs");
}

Status philox_uniform(const uint64_t* seeds, const uint64_t* offsets, int n, float* out,
                      cudaStream_t stream) {
  FASTLM_CUDA_REQUIRE(n >= 0 && seeds != nullptr && offsets != nullptr, "philox_uniform: bad args");
  if (n == 0) return Status::kOk;
  philox_kernel<<<(n + 255) / 256, 256, 0, stream>>>(seeds, offsets, n, out);
  return check_launch("philox_uniform");
}

}  // namespace fastlm::cuda
