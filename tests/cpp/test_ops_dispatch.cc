// The op entry points' contract: the ExecContext's device must match every tensor, dtypes an op
// does not list are refused by name, a device without kernels says so, index arrays are int
// tensors validated once by the host-side batch checks (not by the op), and the CPU backend
// owns the device policy (memory, KV budget, dtype=auto). Also the CPU paged attention's decode
// score kernels against the block kernels they must match bit for bit (batch invariance).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "core/status.h"
#include "cpu/cpu_backend.h"
#include "cpu/isa.h"
#include "cpu/paged_attention_tiles.h"
#include "ops/backend.h"
#include "ops/batch_checks.h"
#include "ops/dispatch.h"
#include "ops/ops.h"

namespace fastlm {
namespace {

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const InvalidArgument& e) {
    return e.what();
  }
  return "<no InvalidArgument>";
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

TEST(OpsDispatch, CallsTheBodyForEachListedDtype) {
  ExecContext& ctx = ops::default_context(Device::kCPU);
  using namespace ops::detail;
  std::vector<DType> seen;
  for (DType d : {DType::kF32, DType::kBF16, DType::kF16}) {
    dispatch(ctx, "probe", Axis<F32Only>{DType::kF32, "x"}, Axis<FloatTypes>{d, "w"},
             [&](auto device, auto act, auto w) {
               static_assert(decltype(act)::value == DType::kF32);
               EXPECT_TRUE(is_cpu<decltype(device)>);
               seen.push_back(decltype(w)::value);
             });
  }
  EXPECT_EQ(seen, (std::vector<DType>{DType::kF32, DType::kBF16, DType::kF16}));
  const std::string msg = error_of(
      [&] { dispatch(ctx, "probe", Axis<CacheTypes>{DType::kI32, "cache"}, [](auto, auto) {}); });
  EXPECT_EQ(msg, "probe: cache must be float32 or bfloat16, got int32");
  EXPECT_EQ(FloatTypes::names(), "float32, bfloat16 or float16");
}

TEST(OpsDispatch, OpsRefuseTensorsOnAnotherDevice) {
  ExecContext& ctx = ops::default_context(Device::kCPU);
  Tensor x = Tensor::zeros({2, 4}, DType::kF32);
  Tensor w = Tensor::zeros({4}, DType::kF32);
  Tensor y = Tensor::zeros({2, 4}, DType::kF32);
  // A CUDA-labelled view (no CUDA memory is touched: the entry point refuses it first).
  Tensor w_dev = Tensor::view(w.data(), {4}, DType::kF32, nullptr, Device::kCUDA);
  EXPECT_TRUE(contains(error_of([&] { ops::rms_norm(ctx, x, w_dev, 1e-6f, y); }),
                       "a cuda tensor given to an op running on cpu"));
  // A context on a device without kernels in this build.
  ExecContext cuda_ctx{Device::kCUDA, nullptr, nullptr, nullptr};
  Tensor x_dev = Tensor::view(x.data(), {2, 4}, DType::kF32, nullptr, Device::kCUDA);
  Tensor y_dev = Tensor::view(y.data(), {2, 4}, DType::kF32, nullptr, Device::kCUDA);
  EXPECT_TRUE(contains(error_of([&] { ops::rms_norm(cuda_ctx, x_dev, w_dev, 1e-6f, y_dev); }),
                       "rms_norm: no cuda kernel"));
  EXPECT_FALSE(ops::device_available(Device::kCUDA));
  EXPECT_THROW(ops::backend(Device::kCUDA), InvalidArgument);
}

TEST(OpsDispatch, IndexArraysAreIntTensorsCheckedByTheHost) {
  ExecContext& ctx = ops::default_context(Device::kCPU);
  Tensor table = Tensor::zeros({10, 4}, DType::kF32);
  table.data<float>()[3 * 4] = 7.0f;
  std::vector<int32_t> ids{3, 0};
  Tensor out = Tensor::zeros({2, 4}, DType::kF32);
  ops::embedding(ctx, table, host_view(ids), out);
  EXPECT_EQ(out.data<float>()[0], 7.0f);
  // Wrong index dtype: a shape/dtype check at the entry point.
  std::vector<int64_t> ids64{3, 0};
  EXPECT_TRUE(contains(error_of([&] { ops::embedding(ctx, table, host_view(ids64), out); }),
                       "ids must be int32"));
  // Out-of-range ids: caught by the host-side check, once.
  std::vector<int32_t> bad{3, 10};
  EXPECT_TRUE(contains(error_of([&] { ops::check_token_ids(host_view(bad), 10); }),
                       "token id 10 outside the vocabulary of 10"));
  std::vector<int64_t> slots{0, 5, -1};
  EXPECT_NO_THROW(ops::check_slot_mapping(host_view(slots), 6));
  EXPECT_THROW(ops::check_slot_mapping(host_view(slots), 5), InvalidArgument);

  ops::AttentionBatch b;
  std::vector<int32_t> qsl{0, 2, 3}, lens{4, 17}, tables{1, 0, 2, 3};
  b.query_start_loc = host_view(qsl);
  b.seq_lens = host_view(lens);
  b.block_tables = host_view(tables, 2, 2);
  b.block_size = 16;
  EXPECT_NO_THROW(ops::check_attention_batch(b, 3, 4));
  EXPECT_TRUE(contains(error_of([&] { ops::check_attention_batch(b, 3, 3); }),
                       "sequence 1 block 1 id 3 outside the cache of 3 blocks"));
  lens[1] = 33;  // needs 3 blocks, the table holds 2
  EXPECT_TRUE(contains(error_of([&] { ops::check_attention_batch(b, 3, 4); }), "needs 3 blocks"));
  EXPECT_TRUE(contains(error_of([&] { ops::check_query_start_loc(host_view(qsl), 4); }),
                       "query_start_loc must run from 0 to 4"));
}

TEST(CpuBackend, OwnsDevicePolicy) {
  Backend& b = ops::backend(Device::kCPU);
  EXPECT_EQ(&b, &cpu::cpu_backend());
  EXPECT_EQ(b.device(), Device::kCPU);
  EXPECT_EQ(&b.allocator(), &cpu_allocator());
  const MemoryInfo mem = b.memory_info();
  EXPECT_GT(mem.total_bytes, 0);
  EXPECT_GT(mem.available_bytes, 0);
  EXPECT_LE(mem.available_bytes, mem.total_bytes);
  EXPECT_EQ(b.kv_cache_budget({12345, 0.0}), 12345);  // explicit bytes win
  const int64_t half = b.kv_cache_budget({0, 0.5});
  EXPECT_GT(half, 0);
  EXPECT_LE(half, cpu::CpuBackend::kMaxKvCacheBytes);
  EXPECT_THROW(b.kv_cache_budget({0, 0.0}), InvalidArgument);
  EXPECT_THROW(b.kv_cache_budget({0, 1.5}), InvalidArgument);
  std::vector<std::string> notes;
  EXPECT_EQ(b.resolve_dtype("bfloat16", DType::kF32, &notes), DType::kBF16);
  EXPECT_EQ(b.resolve_dtype("float16", DType::kF32, &notes), DType::kF32);  // no f16 compute
  EXPECT_EQ(notes.size(), 1u);
  EXPECT_EQ(b.resolve_dtype("auto", DType::kBF16, &notes), DType::kBF16);
  EXPECT_THROW(b.resolve_dtype("int8", DType::kF32, &notes), InvalidArgument);
  const int threads = b.num_threads();
  EXPECT_GE(threads, 1);
  b.set_num_threads(threads);
  EXPECT_THROW(b.set_num_threads(0), InvalidArgument);
  ExecContext& ctx = ops::default_context(Device::kCPU);
  EXPECT_EQ(ctx.device, Device::kCPU);
  EXPECT_EQ(ctx.stream, nullptr);
  EXPECT_EQ(ctx.backend, &b);
  ASSERT_NE(ctx.workspace, nullptr);
}

// Decode scores (cache rows in, no transposed tile) give transpose_k + block scores' bits, and
// each (row, key) is the fma chain over d from 0, for every tile width and query count, bf16 and
// f32 caches, rows scattered in memory, and head dimensions of 3 to 18 in-register transposes.
template <typename T>
void check_decode_scores(int d) {
  using cpu::attn::kMaxStreamQueries;
  using cpu::attn::kTile;
  const cpu::attn::Kernels<T> kern = cpu::attn::pick_kernels<T>(d);
  // Every vector ISA has them (the AVX2 kernels); the scalar path keeps the block kernels.
  if (cpu::active_isa() == cpu::Isa::kScalar) {
    EXPECT_EQ(kern.decode_scores[0], nullptr);
    return;
  }
  std::mt19937 rng(d);
  std::normal_distribution<float> normal;
  auto elem = [&](float x) {
    if constexpr (std::is_same_v<T, float>) {
      return x;
    } else {
      uint32_t bits;
      std::memcpy(&bits, &x, 4);
      return static_cast<uint16_t>(bits >> 16);
    }
  };
  auto widen = [](T x) {
    if constexpr (std::is_same_v<T, float>) {
      return x;
    } else {
      const uint32_t bits = uint32_t{x} << 16;
      float f;
      std::memcpy(&f, &bits, 4);
      return f;
    }
  };
  // Rows of a pool in a shuffled order, like blocks of a paged cache.
  std::vector<T> pool(static_cast<size_t>(kTile + 3) * d);
  for (T& x : pool) x = elem(normal(rng));
  std::vector<int> order(kTile + 3);
  for (int j = 0; j < kTile + 3; ++j) order[j] = j;
  std::shuffle(order.begin(), order.end(), rng);
  const T* rows[kTile];
  for (int j = 0; j < kTile; ++j) rows[j] = pool.data() + static_cast<size_t>(order[j]) * d;
  std::vector<float> q(static_cast<size_t>(kMaxStreamQueries) * d);
  for (float& x : q) x = normal(rng);
  std::vector<float> kt(static_cast<size_t>(kTile) * d);
  std::vector<float> want(kMaxStreamQueries * kTile), got(kMaxStreamQueries * kTile);
  for (int nq = 1; nq <= kMaxStreamQueries; ++nq) {
    ASSERT_NE(kern.decode_scores[nq - 1], nullptr);
    for (int nk = 1; nk <= kTile; ++nk) {
      kern.transpose_k(rows, nk, d, kt.data());
      kern.scores(q.data(), nq, d, kt.data(), nk, want.data());
      kern.decode_scores[nq - 1](q.data(), rows, nk, d, got.data());
      for (int i = 0; i < nq; ++i)
        for (int j = 0; j < nk; ++j) {
          float chain = 0.0f;
          for (int t = 0; t < d; ++t) chain = std::fma(q[i * d + t], widen(rows[j][t]), chain);
          ASSERT_EQ(std::memcmp(&got[i * kTile + j], &want[i * kTile + j], 4), 0)
              << "nq " << nq << " nk " << nk << " row " << i << " key " << j << ": "
              << got[i * kTile + j] << " vs " << want[i * kTile + j];
          ASSERT_EQ(std::memcmp(&got[i * kTile + j], &chain, 4), 0) << nq << " " << nk;
        }
    }
  }
}

TEST(CpuPagedAttention, DecodeScoresMatchTheBlockKernelsBitForBit) {
  for (int d : {64, 72, 24}) {  // a transpose covers 8 elements of d (bf16) or 4 (f32)
    check_decode_scores<uint16_t>(d);
    check_decode_scores<float>(d);
  }
}

}  // namespace
}  // namespace fastlm
