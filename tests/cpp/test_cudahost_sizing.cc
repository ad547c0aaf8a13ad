// CUDA-graph capture sizes / batch padding and KV-cache sizing arithmetic (host-only).
#include <gtest/gtest.h>

#include <vector>

#include "core/status.h"
#include "fastlm_cuda/host/graph_sizes.h"
#include "fastlm_cuda/host/kv_sizing.h"

namespace fastlm::cuda {
namespace {

TEST(GraphSizes, VllmCaptureSizes) {
  const std::vector<int> s = graph_capture_sizes(512);
  ASSERT_EQ(s.size(), 67u);  // 1, 2, 4 and the 64 multiples of 8 up to 512
  EXPECT_EQ((std::vector<int>(s.begin(), s.begin() + 6)), (std::vector<int>{1, 2, 4, 8, 16, 24}));
  EXPECT_EQ(s.back(), 512);
  EXPECT_EQ(graph_capture_sizes(1024).back(), 512);
  EXPECT_EQ(graph_capture_sizes(3), (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(graph_capture_sizes(20), (std::vector<int>{1, 2, 4, 8, 16, 20}));
  EXPECT_THROW(graph_capture_sizes(0), InvalidArgument);
}

TEST(GraphSizes, PadsToTheNextCapturedSize) {
  const std::vector<int> s = graph_capture_sizes(256);
  EXPECT_EQ(graph_padded_size(s, 1), 1);
  EXPECT_EQ(graph_padded_size(s, 3), 4);
  EXPECT_EQ(graph_padded_size(s, 5), 8);
  EXPECT_EQ(graph_padded_size(s, 13), 16);
  EXPECT_EQ(graph_padded_size(s, 17), 24);
  EXPECT_EQ(graph_padded_size(s, 256), 256);
  EXPECT_EQ(graph_padded_size(s, 257), -1);
  EXPECT_THROW(graph_padded_size(s, 0), InvalidArgument);
}

KvSizingInput h200_8b() {
  KvSizingInput in;
  in.total_bytes = 143771ull << 20;  // nvidia-smi on the H200 here
  in.free_bytes_at_start = in.total_bytes - (500ull << 20);
  in.gpu_memory_utilization = 0.9;
  in.weights_bytes = 16060522496ull;  // Llama-3-8B bf16
  in.peak_activation_bytes = 2ull << 30;
  in.other_bytes = 1ull << 30;
  // 32 layers x 16 tokens x 8 kv heads x 128 dims x 2 (K, V) x 2 bytes
  in.bytes_per_block = 2ull * 32 * 16 * 8 * 128 * 2;
  in.block_size = 16;
  in.max_model_len = 8192;
  return in;
}

TEST(KvSizing, BlocksAreWhatIsLeftOfTheShare) {
  const KvSizingInput in = h200_8b();
  const KvSizing out = size_kv_cache(in);
  const double share = static_cast<double>(in.total_bytes) * 0.9;
  const double left = share - 16060522496.0 - (3ull << 30);
  EXPECT_EQ(out.num_blocks, static_cast<int64_t>(left / in.bytes_per_block));
  EXPECT_EQ(out.kv_bytes, static_cast<size_t>(out.num_blocks) * in.bytes_per_block);
  EXPECT_LE(static_cast<double>(out.kv_bytes), left);
  EXPECT_GT(static_cast<double>(out.kv_bytes + in.bytes_per_block), left);
  EXPECT_DOUBLE_EQ(out.max_concurrency, static_cast<double>(out.num_blocks) / 512.0);
  // 128 KiB per token, 2 MiB per block.
  EXPECT_EQ(in.bytes_per_block, 131072u * 16);
}

TEST(KvSizing, RefusesWhatDoesNotFit) {
  KvSizingInput in = h200_8b();
  in.gpu_memory_utilization = 0.0;
  EXPECT_THROW(size_kv_cache(in), InvalidArgument);
  in.gpu_memory_utilization = 1.5;
  EXPECT_THROW(size_kv_cache(in), InvalidArgument);
  in = h200_8b();
  in.free_bytes_at_start = in.total_bytes / 2;  // another process holds half the GPU
  EXPECT_THROW(size_kv_cache(in), InvalidArgument);
  in = h200_8b();
  in.gpu_memory_utilization = 0.1;  // 14 GiB < the 15 GiB of weights
  EXPECT_THROW(size_kv_cache(in), InvalidArgument);
  in = h200_8b();
  in.bytes_per_block = 0;
  EXPECT_THROW(size_kv_cache(in), InvalidArgument);
}

}  // namespace
}  // namespace fastlm::cuda
