// extern "C" wrappers over the CUDA kernels for tests/gpu and bench/gpu (ctypes; torch allocates
// the device memory and passes data_ptr()s). Pointers travel as uintptr_t, dtypes as ints
// (0 f32, 1 f16, 2 bf16), streams as torch's cuda_stream handle; each returns the Status as int.
#include <cstdint>

#include "fastlm_cuda/kernels.h"

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

}  // extern "C"
