// extern "C" wrappers over the CUDA kernels for tests/gpu and bench/gpu (ctypes; torch allocates
// the device memory and passes data_ptr()s). Pointers travel as uintptr_t, dtypes as ints
// (0 f32, 1 f16, 2 bf16), streams as torch's cuda_stream handle; each returns the Status as int.
#include <cstdint>
#include <exception>
#include <vector>

#include "../src/fail.h"
#include "fastlm_cuda/attention.h"
#include "fastlm_cuda/device_memory.h"
#include "fastlm_cuda/kernels.h"
#include "fastlm_cuda/sampling.h"
#if FASTLM_CUBLASLT
#include "fastlm_cuda/gemm.h"
#endif

using fastlm::cuda::DType;
using fastlm::cuda::Status;

namespace {
template <typename T = void>
T* P(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}
DType D(int dtype) { return static_cast<DType>(dtype); }
cudaStream_t S(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }
int R(Status s) { return static_cast<int>(s); }
}  // namespace

extern "C" {

const char* fl_last_error() { return fastlm::cuda::last_error_message(); }

int fl_rms_norm(int dtype, uintptr_t x, int64_t x_stride, uintptr_t w, float eps, uintptr_t y,
                int64_t rows, int64_t hidden, uintptr_t stream) {
  return R(
      fastlm::cuda::rms_norm(D(dtype), P(x), x_stride, P(w), eps, P(y), rows, hidden, S(stream)));
}

int fl_add_rms_norm(int dtype, uintptr_t residual, uintptr_t x, uintptr_t w, float eps, uintptr_t y,
                    int64_t rows, int64_t hidden, uintptr_t stream) {
  return R(fastlm::cuda::add_rms_norm(D(dtype), P(residual), P(x), P(w), eps, P(y), rows, hidden,
                                      S(stream)));
}

int fl_head_rms_norm(int dtype, uintptr_t x, int64_t x_stride, int heads, int head_dim, uintptr_t w,
                     float eps, int64_t rows, uintptr_t stream) {
  return R(fastlm::cuda::head_rms_norm(D(dtype), P(x), x_stride, heads, head_dim, P(w), eps, rows,
                                       S(stream)));
}

int fl_layer_norm(int dtype, uintptr_t x, uintptr_t residual, uintptr_t w, uintptr_t b, float eps,
                  uintptr_t y, int64_t rows, int64_t hidden, uintptr_t stream) {
  return R(fastlm::cuda::layer_norm(D(dtype), P(x), P(residual), P(w), P(b), eps, P(y), rows,
                                    hidden, S(stream)));
}

int fl_rope_write_kv(int dtype, uintptr_t q, int64_t q_stride, int num_q_heads, uintptr_t k,
                     int64_t k_stride, uintptr_t v, int64_t v_stride, int num_kv_heads,
                     int head_dim, int rot_dim, uintptr_t positions, uintptr_t cos_sin,
                     uintptr_t k_cache, uintptr_t v_cache, uintptr_t slot_mapping, int64_t tokens,
                     uintptr_t stream) {
  fastlm::cuda::RopeKvArgs a;
  a.q = P(q);
  a.q_stride = q_stride;
  a.num_q_heads = num_q_heads;
  a.k = P(k);
  a.k_stride = k_stride;
  a.v = P(v);
  a.v_stride = v_stride;
  a.num_kv_heads = num_kv_heads;
  a.head_dim = head_dim;
  a.rot_dim = rot_dim;
  a.positions = P<const int32_t>(positions);
  a.cos_sin = P<const float>(cos_sin);
  a.k_cache = P(k_cache);
  a.v_cache = P(v_cache);
  a.slot_mapping = P<const int64_t>(slot_mapping);
  a.tokens = tokens;
  return R(fastlm::cuda::rope_write_kv(D(dtype), a, S(stream)));
}

int fl_silu_mul(int dtype, uintptr_t gate_up, uintptr_t out, int64_t m, int64_t inter,
                uintptr_t stream) {
  return R(fastlm::cuda::silu_mul(D(dtype), P(gate_up), P(out), m, inter, S(stream)));
}

int fl_gelu(int dtype, uintptr_t x, int64_t n, int tanh_approximation, uintptr_t stream) {
  return R(fastlm::cuda::gelu(D(dtype), P(x), n, tanh_approximation != 0, S(stream)));
}

int fl_add_bias(int dtype, uintptr_t x, uintptr_t bias, int64_t m, int64_t n, uintptr_t stream) {
  return R(fastlm::cuda::add_bias(D(dtype), P(x), P(bias), m, n, S(stream)));
}

int fl_embedding(int dtype, uintptr_t table, int64_t vocab, uintptr_t ids, uintptr_t out, int64_t n,
                 int64_t hidden, uintptr_t stream) {
  return R(fastlm::cuda::embedding(D(dtype), P(table), vocab, P<const int32_t>(ids), P(out), n,
                                   hidden, S(stream)));
}

int fl_gather_rows(int dtype, uintptr_t x, int64_t x_stride, uintptr_t rows, uintptr_t out,
                   int64_t n, int64_t hidden, uintptr_t stream) {
  return R(fastlm::cuda::gather_rows(D(dtype), P(x), x_stride, P<const int32_t>(rows), P(out), n,
                                     hidden, S(stream)));
}

int fl_pool(int dtype, uintptr_t hidden_states, uintptr_t query_start_loc, int num_seqs,
            int64_t hidden, int type, int normalize, uintptr_t out, uintptr_t stream) {
  return R(fastlm::cuda::pool(D(dtype), P(hidden_states), P<const int32_t>(query_start_loc),
                              num_seqs, hidden, static_cast<fastlm::cuda::PoolingType>(type),
                              normalize != 0, P<float>(out), S(stream)));
}

// Attention: `kernel` 0 = attention() (the dispatcher), 1 = split-KV, 2 = tensor-core tiles.
int fl_attention(int dtype, int kernel, uintptr_t q, int64_t q_stride, uintptr_t out,
                 int64_t out_stride, uintptr_t k_cache, uintptr_t v_cache, uintptr_t block_tables,
                 int max_blocks_per_seq, int block_size, uintptr_t k, uintptr_t v,
                 int64_t kv_stride, int num_tokens, int num_seqs, uintptr_t query_start_loc,
                 uintptr_t seq_lens, int max_query_len, int max_seq_len, int num_q_heads,
                 int num_kv_heads, int head_dim, float scale, int sliding_window, int causal,
                 uintptr_t workspace, uint64_t workspace_bytes, int num_splits, uintptr_t stream) {
  fastlm::cuda::AttentionArgs a;
  a.q = P(q);
  a.q_stride = q_stride;
  a.out = P(out);
  a.out_stride = out_stride;
  a.k_cache = P(k_cache);
  a.v_cache = P(v_cache);
  a.block_tables = P<const int32_t>(block_tables);
  a.max_blocks_per_seq = max_blocks_per_seq;
  a.block_size = block_size;
  a.k = P(k);
  a.v = P(v);
  a.kv_stride = kv_stride;
  a.num_tokens = num_tokens;
  a.num_seqs = num_seqs;
  a.query_start_loc = P<const int32_t>(query_start_loc);
  a.seq_lens = P<const int32_t>(seq_lens);
  a.max_query_len = max_query_len;
  a.max_seq_len = max_seq_len;
  a.num_q_heads = num_q_heads;
  a.num_kv_heads = num_kv_heads;
  a.head_dim = head_dim;
  a.scale = scale;
  a.sliding_window = sliding_window;
  a.causal = causal != 0;
  a.workspace = P(workspace);
  a.workspace_bytes = workspace_bytes;
  a.num_splits = num_splits;
  switch (kernel) {
    case 1:
      return R(fastlm::cuda::attention_split_kv(D(dtype), a, S(stream)));
    case 2:
      return R(fastlm::cuda::attention_tiled(D(dtype), a, S(stream)));
    default:
      return R(fastlm::cuda::attention(D(dtype), a, S(stream)));
  }
}

uint64_t fl_attention_workspace_bytes(int num_tokens, int num_q_heads, int head_dim,
                                      int max_seq_len) {
  return fastlm::cuda::attention_workspace_bytes(num_tokens, num_q_heads, head_dim, max_seq_len);
}

int fl_apply_penalties(uintptr_t logits, int batch, int vocab, uintptr_t repetition,
                       uintptr_t frequency, uintptr_t presence, uintptr_t offsets,
                       uintptr_t token_ids, uintptr_t output_counts, uintptr_t in_prompt,
                       uintptr_t stream) {
  fastlm::cuda::PenaltyArgs a;
  a.repetition = P<const float>(repetition);
  a.frequency = P<const float>(frequency);
  a.presence = P<const float>(presence);
  a.offsets = P<const int32_t>(offsets);
  a.token_ids = P<const int32_t>(token_ids);
  a.output_counts = P<const int32_t>(output_counts);
  a.in_prompt = P<const uint8_t>(in_prompt);
  return R(fastlm::cuda::apply_penalties(P<float>(logits), batch, vocab, a, S(stream)));
}

int fl_apply_logit_bias(uintptr_t logits, int batch, int vocab, uintptr_t offsets,
                        uintptr_t token_ids, uintptr_t values, uintptr_t stream) {
  return R(fastlm::cuda::apply_logit_bias(P<float>(logits), batch, vocab, P<const int32_t>(offsets),
                                          P<const int32_t>(token_ids), P<const float>(values),
                                          S(stream)));
}

int fl_apply_token_bitmask(uintptr_t logits, int batch, int vocab, uintptr_t bitmask,
                           uintptr_t mask_index, uintptr_t stream) {
  return R(fastlm::cuda::apply_token_bitmask(P<float>(logits), batch, vocab,
                                             P<const int32_t>(bitmask),
                                             P<const int32_t>(mask_index), S(stream)));
}

int fl_sample(uintptr_t logits, int batch, int vocab, uintptr_t temperature, uintptr_t top_k,
              uintptr_t top_p, uintptr_t min_p, uintptr_t seeds, uintptr_t offsets,
              uintptr_t sampled, uintptr_t stream) {
  fastlm::cuda::SampleArgs a;
  a.logits = P<const float>(logits);
  a.batch = batch;
  a.vocab = vocab;
  a.temperature = P<const float>(temperature);
  a.top_k = P<const int32_t>(top_k);
  a.top_p = P<const float>(top_p);
  a.min_p = P<const float>(min_p);
  a.seeds = P<const uint64_t>(seeds);
  a.offsets = P<const uint64_t>(offsets);
  a.sampled = P<int32_t>(sampled);
  return R(fastlm::cuda::sample(a, S(stream)));
}

int fl_compute_logprobs(uintptr_t logits, int batch, int vocab, uintptr_t token_ids, int top_n,
                        uintptr_t token_logprob, uintptr_t token_rank, uintptr_t top_ids,
                        uintptr_t top_logprobs, uintptr_t stream) {
  return R(fastlm::cuda::compute_logprobs(P<const float>(logits), batch, vocab,
                                          P<const int32_t>(token_ids), top_n,
                                          P<float>(token_logprob), P<int32_t>(token_rank),
                                          P<int32_t>(top_ids), P<float>(top_logprobs), S(stream)));
}

int fl_philox_uniform(uintptr_t seeds, uintptr_t offsets, int n, uintptr_t out, uintptr_t stream) {
  return R(fastlm::cuda::philox_uniform(P<const uint64_t>(seeds), P<const uint64_t>(offsets), n,
                                        P<float>(out), S(stream)));
}

int fl_has_gemm() {
#if FASTLM_CUBLASLT
  return 1;
#else
  return 0;
#endif
}

int fl_gemm(int dtype, int out_dtype, uintptr_t x, uintptr_t w, uintptr_t bias, uintptr_t y,
            int64_t m, int64_t n, int64_t k, int gelu, uintptr_t stream) {
#if FASTLM_CUBLASLT
  return R(fastlm::cuda::gemm_out(
      D(dtype), D(out_dtype), P(x), P(w), P(bias), P(y), m, n, k,
      gelu != 0 ? fastlm::cuda::GemmEpilogue::kGeluTanh : fastlm::cuda::GemmEpilogue::kNone,
      S(stream)));
#else
  return R(Status::kUnsupported);
#endif
}

int fl_gemm_cached_algorithms() {
#if FASTLM_CUBLASLT
  return fastlm::cuda::gemm_cached_algorithms();
#else
  return -1;
#endif
}

// The caching allocator over cudaMalloc: `rounds` rounds of allocating `count` blocks of the
// given sizes (device memory, each written with cudaMemset) and freeing them; then stats into
// out[0..6]: allocated, reserved, peak allocated, allocs, cache hits, segments allocated,
// OOM retries. Returns the status (kCudaError if a memset failed).
int fl_caching_allocator_roundtrip(const uint64_t* sizes, int count, int rounds, int64_t* out) try {
  fastlm::cuda::CudaRawAllocator raw;
  fastlm::cuda::CachingAllocator alloc(raw);
  std::vector<void*> live;
  for (int r = 0; r < rounds; ++r) {
    for (int i = 0; i < count; ++i) {
      void* p = alloc.allocate(sizes[i]);
      if (cudaMemset(p, 0x5a, sizes[i]) != cudaSuccess) return R(Status::kCudaError);
      live.push_back(p);
    }
    for (void* p : live) alloc.free(p);
    live.clear();
  }
  alloc.check_invariants();
  const auto& s = alloc.stats();
  out[0] = static_cast<int64_t>(s.allocated_bytes);
  out[1] = static_cast<int64_t>(s.reserved_bytes);
  out[2] = static_cast<int64_t>(s.peak_allocated_bytes);
  out[3] = s.num_allocs;
  out[4] = s.num_cache_hits;
  out[5] = s.num_segments_allocated;
  out[6] = s.num_oom_retries;
  return R(Status::kOk);
} catch (const std::exception& e) {  // fastlm::Error: out of memory, broken invariant
  fastlm::cuda::fail(Status::kCudaError, e.what());
  return R(Status::kCudaError);
}

int fl_device_memory_info(uint64_t* free_bytes, uint64_t* total_bytes) {
  size_t f = 0, t = 0;
  const Status st = fastlm::cuda::device_memory_info(&f, &t);
  *free_bytes = f;
  *total_bytes = t;
  return R(st);
}

}  // extern "C"
