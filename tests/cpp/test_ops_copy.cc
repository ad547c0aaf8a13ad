// The data-movement ops that replace host loops in the models' forward: column slices of the
// fused q/k/v projection, row gathers (logits rows), elementwise add, RoBERTa position ids.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "core/status.h"
#include "ops/backend.h"
#include "ops/ops.h"

namespace fastlm {
namespace {

Tensor iota(std::vector<int64_t> shape) {
  Tensor t = Tensor::empty(std::move(shape), DType::kF32);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = static_cast<float>(i);
  return t;
}

TEST(OpsCopy, CopyColumnsSlicesEachRow) {
  ExecContext& ctx = ops::default_context(Device::kCPU);
  Tensor src = iota({3, 10});  // row r holds 10r .. 10r + 9
  Tensor dst = Tensor::zeros({3, 4}, DType::kF32);
  ops::copy_columns(ctx, src, 5, dst);
  for (int r = 0; r < 3; ++r) {
    for (int c = 0; c < 4; ++c) EXPECT_EQ(dst.data<float>()[r * 4 + c], 10 * r + 5 + c);
  }
  Tensor too_wide = Tensor::zeros({3, 6}, DType::kF32);
  EXPECT_THROW(ops::copy_columns(ctx, src, 5, too_wide), InvalidArgument);
}

TEST(OpsCopy, GatherRowsOfAnyDtype) {
  ExecContext& ctx = ops::default_context(Device::kCPU);
  Tensor src = iota({5, 3});
  std::vector<int32_t> idx{4, 0, 4};
  Tensor dst = Tensor::zeros({3, 3}, DType::kF32);
  ops::gather_rows(ctx, src, host_view(idx), dst);
  const std::vector<float> want{12, 13, 14, 0, 1, 2, 12, 13, 14};
  EXPECT_EQ(std::vector<float>(dst.data<float>(), dst.data<float>() + 9), want);
  Tensor bits = Tensor::empty({5, 2}, DType::kBF16);
  for (int i = 0; i < 10; ++i) bits.data<uint16_t>()[i] = static_cast<uint16_t>(i);
  Tensor out = Tensor::zeros({3, 2}, DType::kBF16);
  ops::gather_rows(ctx, bits, host_view(idx), out);
  EXPECT_EQ(out.data<uint16_t>()[0], 8);
  EXPECT_EQ(out.data<uint16_t>()[3], 1);
  Tensor wrong = Tensor::zeros({2, 3}, DType::kF32);
  EXPECT_THROW(ops::gather_rows(ctx, src, host_view(idx), wrong), InvalidArgument);
}

TEST(OpsCopy, AddIsElementwise) {
  ExecContext& ctx = ops::default_context(Device::kCPU);
  Tensor x = iota({2, 3});
  Tensor y = iota({2, 3});
  ops::add(ctx, x, y);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(x.data<float>()[i], 2.0f * i);
  Tensor z = iota({3, 2});
  EXPECT_THROW(ops::add(ctx, x, z), InvalidArgument);
}

TEST(OpsCopy, RobertaPositionsCountNonPadTokensPerSequence) {
  ExecContext& ctx = ops::default_context(Device::kCPU);
  const int32_t pad = 1;
  std::vector<int32_t> ids{0, 5, 6, 2, pad, pad, 0, 7, 2};
  std::vector<int32_t> qsl{0, 6, 9};
  Tensor pos = Tensor::zeros({9}, DType::kI32);
  ops::roberta_positions(ctx, host_view(ids), host_view(qsl), pad, pos);
  const std::vector<int32_t> want{2, 3, 4, 5, 1, 1, 2, 3, 4};
  EXPECT_EQ(std::vector<int32_t>(pos.data<int32_t>(), pos.data<int32_t>() + 9), want);
}

}  // namespace
}  // namespace fastlm
