// FlashAttention-2-style tiles on tensor cores (wmma m16n16k16, float accumulate): a CTA of 4
// warps takes 64 query rows of one (sequence, query head); each warp owns 16 rows. Per key tile
// (BC keys): S = Q K^T on tensor cores into shared memory, the online softmax in float32 by the
// warp's lanes (two lanes per row), P rounded to T, O = O * alpha + P V on tensor cores with O
// kept in shared memory as float (so the per-row rescale is a plain loop).
#include <mma.h>

#include "attention_common.cuh"

namespace fastlm::cuda {

namespace {

using namespace nvcuda;

constexpr int kBr = 64;  // query rows per CTA
constexpr int kWarps = kBr / 16;

template <int D>
struct TileShape {
  static constexpr int kBc = D <= 64 ? 64 : 32;  // keys per tile (shared memory < 99 KB)
  static constexpr int kLdT = D + 8;             // T rows (Q, K, V), padded against bank conflicts
  static constexpr int kLdS = kBc + 4;           // float S rows
  static constexpr int kLdP = kBc + 8;           // T P rows
  static constexpr int kLdO = D + 4;             // float O rows
  static constexpr size_t align(size_t b) { return (b + 127) / 128 * 128; }
  static constexpr size_t kQ = 0;
  static constexpr size_t kK = kQ + align(size_t{kBr} * kLdT * 2);
  static constexpr size_t kV = kK + align(size_t{kBc} * kLdT * 2);
  static constexpr size_t kS = kV + align(size_t{kBc} * kLdT * 2);
  static constexpr size_t kP = kS + align(size_t{kBr} * kLdS * 4);
  static constexpr size_t kO = kP + align(size_t{kBr} * kLdP * 2);
  static constexpr size_t kAlpha = kO + align(size_t{kBr} * kLdO * 4);
  static constexpr size_t kBytes = kAlpha + align(size_t{kBr} * 4);
};

// Copies `rows` rows of D elements into shared memory (ld kLdT), 16 bytes per thread-step;
// rows where row_ptr returns null are zero-filled.
template <typename T, int D, int LD, typename RowPtr>
__device__ __forceinline__ void load_tile(T* dst, int rows, RowPtr row_ptr) {
  constexpr int kVec = 8;  // T elements per 16 bytes
  constexpr int kPerRow = D / kVec;
  for (int i = threadIdx.x; i < rows * kPerRow; i += blockDim.x) {
    const int r = i / kPerRow, c = (i % kPerRow) * kVec;
    const T* src = row_ptr(r);
    uint4 v = make_uint4(0, 0, 0, 0);
    if (src != nullptr) v = *reinterpret_cast<const uint4*>(src + c);
    *reinterpret_cast<uint4*>(dst + r * LD + c) = v;
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kWarps * 32) tiled_kernel(AttentionArgs a) {
  using Shape = TileShape<D>;
  constexpr int kBc = Shape::kBc;
  extern __shared__ __align__(128) unsigned char smem[];
  T* sq = reinterpret_cast<T*>(smem + Shape::kQ);
  T* sk = reinterpret_cast<T*>(smem + Shape::kK);
  T* sv = reinterpret_cast<T*>(smem + Shape::kV);
  float* ss = reinterpret_cast<float*>(smem + Shape::kS);
  T* sp = reinterpret_cast<T*>(smem + Shape::kP);
  float* so = reinterpret_cast<float*>(smem + Shape::kO);
  float* salpha = reinterpret_cast<float*>(smem + Shape::kAlpha);

  const int s = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * kBr;
  const int seq_begin = a.query_start_loc[s];
  const int q_len = a.query_start_loc[s + 1] - seq_begin;
  if (q0 >= q_len) return;
  const int seq_len = seq_len_of(a, s);
  const int ctx = seq_len - q_len;  // position of query row 0
  const int kvh = h / (a.num_q_heads / a.num_kv_heads);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  load_tile<T, D, Shape::kLdT>(sq, kBr, [&](int r) -> const T* {
    if (q0 + r >= q_len) return nullptr;
    return static_cast<const T*>(a.q) + static_cast<int64_t>(seq_begin + q0 + r) * a.q_stride +
           static_cast<int64_t>(h) * D;
  });
  for (int i = threadIdx.x; i < kBr * Shape::kLdO; i += blockDim.x) so[i] = 0.0f;

  // Keys any row of this tile may see.
  const int last_row = min(q0 + kBr, q_len) - 1;
  const KeyRange first = visible_keys(a, ctx + q0, seq_len);
  const KeyRange last = visible_keys(a, ctx + last_row, seq_len);
  const int k_lo = first.lo / kBc * kBc, k_hi = last.hi;

  // Two lanes per row: lane / 2 is the warp's row, lane % 2 the half of the key tile.
  const int row = warp * 16 + lane / 2;
  const int q_row = q0 + row;
  const KeyRange mine = q_row < q_len ? visible_keys(a, ctx + q_row, seq_len) : KeyRange{0, 0};
  float m = -INFINITY, l = 0.0f;

  for (int kt = k_lo; kt < k_hi; kt += kBc) {
    __syncthreads();  // the previous tile's K/V reads are done
    load_tile<T, D, Shape::kLdT>(sk, kBc, [&](int r) -> const T* {
      const int j = kt + r;
      return j < k_hi ? kv_row<T>(a, a.k_cache, a.k, s, seq_begin, j, kvh) : nullptr;
    });
    load_tile<T, D, Shape::kLdT>(sv, kBc, [&](int r) -> const T* {
      const int j = kt + r;
      return j < k_hi ? kv_row<T>(a, a.v_cache, a.v, s, seq_begin, j, kvh) : nullptr;
    });
    __syncthreads();

    // S = Q K^T for this warp's 16 rows.
    float* sw = ss + warp * 16 * Shape::kLdS;
#pragma unroll
    for (int nb = 0; nb < kBc / 16; ++nb) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.0f);
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb;
        wmma::load_matrix_sync(fa, sq + warp * 16 * Shape::kLdT + kk * 16, Shape::kLdT);
        wmma::load_matrix_sync(fb, sk + nb * 16 * Shape::kLdT + kk * 16, Shape::kLdT);
        wmma::mma_sync(acc, fa, fb, acc);
      }
      wmma::store_matrix_sync(sw + nb * 16, acc, Shape::kLdS, wmma::mem_row_major);
    }
    __syncwarp();

    // Online softmax over this row's half of the tile.
    const float* srow = sw + (lane / 2) * Shape::kLdS;
    T* prow = sp + row * Shape::kLdP;
    constexpr int kHalf = kBc / 2;
    const int c0 = (lane % 2) * kHalf;
    float tile_max = -INFINITY;
    for (int c = c0; c < c0 + kHalf; ++c) {
      const int j = kt + c;
      if (j >= mine.lo && j < mine.hi) tile_max = fmaxf(tile_max, srow[c] * a.scale);
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    const float m_new = fmaxf(m, tile_max);
    // No visible key yet: nothing to rescale (and exp(-inf - -inf) would be NaN).
    const float alpha = m_new == -INFINITY ? 1.0f : __expf(m - m_new);
    float sum = 0.0f;
    for (int c = c0; c < c0 + kHalf; ++c) {
      const int j = kt + c;
      const float p = (j >= mine.lo && j < mine.hi) ? __expf(srow[c] * a.scale - m_new) : 0.0f;
      const T pt = from_f32<T>(p);
      prow[c] = pt;
      sum += to_f32(pt);  // l sums what P V multiplies
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    l = l * alpha + sum;
    m = m_new;
    if (lane % 2 == 0) salpha[row] = alpha;
    __syncwarp();

    // O = O * alpha + P V.
    float* ow = so + warp * 16 * Shape::kLdO;
    for (int i = lane; i < 16 * D; i += 32) {
      const int r = i / D, c = i % D;
      ow[r * Shape::kLdO + c] *= salpha[warp * 16 + r];
    }
    __syncwarp();
#pragma unroll
    for (int db = 0; db < D / 16; ++db) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::load_matrix_sync(acc, ow + db * 16, Shape::kLdO, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < kBc / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb;
        wmma::load_matrix_sync(fa, sp + warp * 16 * Shape::kLdP + kk * 16, Shape::kLdP);
        wmma::load_matrix_sync(fb, sv + kk * 16 * Shape::kLdT + db * 16, Shape::kLdT);
        wmma::mma_sync(acc, fa, fb, acc);
      }
      wmma::store_matrix_sync(ow + db * 16, acc, Shape::kLdO, wmma::mem_row_major);
    }
    __syncwarp();
  }

  __syncthreads();  // the zero-filled O when no key tile ran
  // out = O / l, two lanes per row.
  if (q_row >= q_len) return;
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  const float* orow = so + row * Shape::kLdO;
  T* dst = static_cast<T*>(a.out) + static_cast<int64_t>(seq_begin + q_row) * a.out_stride +
           static_cast<int64_t>(h) * D;
  for (int c = lane % 2; c < D; c += 2) dst[c] = from_f32<T>(orow[c] * inv);
}

template <typename T, int D>
Status launch_tiled(const AttentionArgs& a, cudaStream_t stream) {
  constexpr size_t bytes = TileShape<D>::kBytes;
  static const cudaError_t attr = cudaFuncSetAttribute(
      tiled_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (attr != cudaSuccess)
    return fail(Status::kCudaError, std::string("attention_tiled: shared memory attribute: ") +
                                        cudaGetErrorString(attr));
  const dim3 grid((a.max_query_len + kBr - 1) / kBr, a.num_q_heads, a.num_seqs);
  tiled_kernel<T, D><<<grid, kWarps * 32, bytes, stream>>>(a);
  return check_launch("attention_tiled");
}

template <typename T>
Status tiled_for(const AttentionArgs& a, cudaStream_t stream) {
  switch (a.head_dim) {
    case 32:
      return launch_tiled<T, 32>(a, stream);
    case 64:
      return launch_tiled<T, 64>(a, stream);
    case 128:
      return launch_tiled<T, 128>(a, stream);
    default:
      return fail(Status::kUnsupported, "attention_tiled: head_dim must be 32/64/128");
  }
}

}  // namespace

Status attention_tiled(DType dtype, const AttentionArgs& a, cudaStream_t stream) {
  if (Status st = check_attention_args(a, "attention_tiled"); st != Status::kOk) return st;
  if (a.num_tokens == 0) return Status::kOk;
  // Rows are copied 16 bytes at a time.
  FASTLM_CUDA_REQUIRE(a.q_stride % 8 == 0 && a.kv_stride % 8 == 0,
                      "attention_tiled: q_stride and kv_stride must be multiples of 8");
  switch (dtype) {
    case DType::kF32:
      return fail(Status::kUnsupported, "attention_tiled: f16/bf16 only");
    case DType::kF16:
      return tiled_for<__half>(a, stream);
    case DType::kBF16:
      return tiled_for<__nv_bfloat16>(a, stream);
  }
  return fail(Status::kInvalidArgument, "attention_tiled: unknown dtype");
}

Status attention(DType dtype, const AttentionArgs& a, cudaStream_t stream) {
  const bool tiles = dtype != DType::kF32 && a.max_query_len > 1 &&
                     (a.head_dim == 32 || a.head_dim == 64 || a.head_dim == 128);
  return tiles ? attention_tiled(dtype, a, stream) : attention_split_kv(dtype, a, stream);
}

Status check_attention_args(const AttentionArgs& a, const char* who) {
  const std::string w(who);
  FASTLM_CUDA_REQUIRE(a.q != nullptr && a.out != nullptr && a.query_start_loc != nullptr,
                      w + ": q, out and query_start_loc are required");
  FASTLM_CUDA_REQUIRE(
      a.num_q_heads > 0 && a.num_kv_heads > 0 && a.num_q_heads % a.num_kv_heads == 0,
      w + ": num_q_heads must be a multiple of num_kv_heads");
  FASTLM_CUDA_REQUIRE(a.q_stride >= static_cast<int64_t>(a.num_q_heads) * a.head_dim &&
                          a.out_stride >= static_cast<int64_t>(a.num_q_heads) * a.head_dim,
                      w + ": a row stride is shorter than its heads");
  if (a.block_tables != nullptr) {
    FASTLM_CUDA_REQUIRE(a.k_cache != nullptr && a.v_cache != nullptr && a.seq_lens != nullptr &&
                            a.block_size > 0 && a.max_blocks_per_seq > 0,
                        w + ": paged attention needs caches, seq_lens and block sizes");
  } else {
    FASTLM_CUDA_REQUIRE(a.k != nullptr && a.v != nullptr &&
                            a.kv_stride >= static_cast<int64_t>(a.num_kv_heads) * a.head_dim,
                        w + ": dense attention needs k, v and kv_stride");
  }
  FASTLM_CUDA_REQUIRE(
      a.num_tokens >= 0 && a.num_seqs >= 0 && a.max_query_len >= 0 && a.max_seq_len >= 0,
      w + ": bad sizes");
  return Status::kOk;
}

}  // namespace fastlm::cuda
