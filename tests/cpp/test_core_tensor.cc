// Tensor: ownership and alignment, views, reshape, row slices, dtype conversion copies.
#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace fastlm {
namespace {

TEST(CoreTensor, EmptyIsAlignedAndSized) {
  Tensor t = Tensor::empty({3, 5}, DType::kBF16);
  EXPECT_TRUE(t.defined());
  EXPECT_EQ(t.dim(), 2);
  EXPECT_EQ(t.size(0), 3);
  EXPECT_EQ(t.size(-1), 5);
  EXPECT_EQ(t.numel(), 15);
  EXPECT_EQ(t.nbytes(), 30u);
  EXPECT_EQ(t.device(), Device::kCPU);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data()) % 64, 0u);
  EXPECT_EQ(t.shape_str(), "[3, 5]");
  EXPECT_THROW(t.size(2), std::out_of_range);
}

TEST(CoreTensor, ZerosAreZero) {
  Tensor t = Tensor::zeros({7, 3}, DType::kF32);
  for (int64_t i = 0; i < t.numel(); ++i) EXPECT_EQ(t.data<float>()[i], 0.0f);
}

TEST(CoreTensor, DefaultIsUndefinedButAnEmptyShapeIsDefined) {
  EXPECT_FALSE(Tensor().defined());
  // A zero-sized tensor has a shape and no bytes to point at: still a valid argument.
  EXPECT_TRUE(Tensor::empty({0, 4}, DType::kF32).defined());
  EXPECT_EQ(Tensor::empty({0, 4}, DType::kF32).nbytes(), 0u);
}

TEST(CoreTensor, ViewSharesMemoryAndHolderKeepsItAlive) {
  std::weak_ptr<void> watch;
  Tensor v;
  {
    auto buffer = std::shared_ptr<float[]>(new float[6]{0, 1, 2, 3, 4, 5});
    std::shared_ptr<void> holder(buffer, buffer.get());
    watch = holder;
    v = Tensor::view(buffer.get(), {2, 3}, DType::kF32, holder);
  }
  ASSERT_FALSE(watch.expired());  // the view alone keeps the buffer
  EXPECT_EQ(v.data<float>()[4], 4.0f);
  Tensor copy = v;  // shallow
  copy.data<float>()[4] = 40.0f;
  EXPECT_EQ(v.data<float>()[4], 40.0f);
  v = Tensor();
  copy = Tensor();
  EXPECT_TRUE(watch.expired());
}

TEST(CoreTensor, ReshapeKeepsStorageAndChecksCount) {
  Tensor t = Tensor::zeros({2, 6}, DType::kF32);
  Tensor r = t.reshape({3, 4});
  EXPECT_EQ(r.data(), t.data());
  EXPECT_EQ(r.shape(), (std::vector<int64_t>{3, 4}));
  EXPECT_THROW(t.reshape({5, 2}), Error);
}

TEST(CoreTensor, SliceRowsOffsetsByRowBytes) {
  Tensor t = Tensor::empty({4, 3}, DType::kF16);
  auto* base = t.data<uint16_t>();
  for (int i = 0; i < 12; ++i) base[i] = static_cast<uint16_t>(i);
  Tensor s = t.slice_rows(1, 3);
  EXPECT_EQ(s.shape(), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(s.data<uint16_t>(), base + 3);
  EXPECT_EQ(s.data<uint16_t>()[5], 8);
  EXPECT_EQ(t.slice_rows(4, 4).numel(), 0);
  EXPECT_THROW(t.slice_rows(2, 5), Error);
  EXPECT_THROW(t.slice_rows(3, 2), Error);
  EXPECT_THROW(t.slice_rows(-1, 2), Error);
}

TEST(CoreTensor, ToConvertsIntoANewBuffer) {
  Tensor f = Tensor::empty({4}, DType::kF32);
  const float values[4] = {1.0f, -2.5f, 0.15625f, 65504.0f};
  for (int i = 0; i < 4; ++i) f.data<float>()[i] = values[i];
  Tensor h = f.to(DType::kF16);
  Tensor b = f.to(DType::kBF16);
  Tensor same = f.to(DType::kF32);
  EXPECT_NE(same.data(), f.data());
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(f16_to_f32(h.data<uint16_t>()[i]), values[i]);  // all exact in f16
    EXPECT_EQ(bf16_to_f32(b.data<uint16_t>()[i]), bf16_to_f32(f32_to_bf16(values[i])));
    EXPECT_EQ(same.data<float>()[i], values[i]);
  }
  Tensor back = h.to(DType::kF32);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(back.data<float>()[i], values[i]);
  EXPECT_THROW(Tensor::zeros({2}, DType::kI32).to(DType::kF32), Error);
}

}  // namespace
}  // namespace fastlm
