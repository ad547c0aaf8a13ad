// ops::pool (CLS / MEAN / LAST rows of each sequence) and ops::pool_finish (softmax / sigmoid,
// L2 normalization), on every device this build has (CPU today).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "core/status.h"
#include "ops/backend.h"
#include "ops/pool.h"

namespace fastlm {
namespace {

std::vector<Device> devices() {
  std::vector<Device> out;
  for (Device d : {Device::kCPU, Device::kCUDA}) {
    if (ops::device_available(d)) out.push_back(d);
  }
  return out;
}

Tensor host_i32(std::vector<int32_t> v) {
  Tensor t = Tensor::empty({static_cast<int64_t>(v.size())}, DType::kI32);
  for (size_t i = 0; i < v.size(); ++i) t.data<int32_t>()[i] = v[i];
  return t;
}

TEST(OpsPool, ClsMeanLastPerSequence) {
  // 3 sequences of 2, 3 and 1 rows; hidden[r][k] = 10 r + k.
  const int64_t T = 6, H = 4;
  Tensor hidden = Tensor::empty({T, H}, DType::kF32);
  for (int64_t r = 0; r < T; ++r)
    for (int64_t k = 0; k < H; ++k) hidden.data<float>()[r * H + k] = 10.0f * r + k;
  const Tensor qsl = host_i32({0, 2, 5, 6});
  const Tensor methods = host_i32({static_cast<int32_t>(ops::PoolMethod::kLast),
                                   static_cast<int32_t>(ops::PoolMethod::kMean),
                                   static_cast<int32_t>(ops::PoolMethod::kCls)});
  for (Device d : devices()) {
    ExecContext& ctx = ops::default_context(d);
    Tensor pooled = Tensor::empty({3, H}, DType::kF32, d);
    ops::pool(ctx, hidden.copy_to(d), qsl.copy_to(d), methods.copy_to(d), pooled);
    const Tensor out = pooled.copy_to(Device::kCPU);
    for (int64_t k = 0; k < H; ++k) {
      EXPECT_EQ(out.data<float>()[0 * H + k], 10.0f * 1 + k);  // last row of sequence 0
      EXPECT_FLOAT_EQ(out.data<float>()[1 * H + k], (20.0f + 30 + 40) / 3 + k);  // mean of 2..4
      EXPECT_EQ(out.data<float>()[2 * H + k], 10.0f * 5 + k);  // first (only) row of 2
    }
  }
  Tensor wrong = Tensor::empty({2, H}, DType::kF32);
  EXPECT_THROW(ops::pool(ops::default_context(Device::kCPU), hidden, qsl, methods, wrong),
               InvalidArgument);
}

TEST(OpsPool, FinishAppliesActivationThenNormalization) {
  const std::vector<float> rows{1.0f, 2.0f, 3.0f,   // softmax
                                0.0f, 2.0f, -2.0f,  // sigmoid, then normalized
                                3.0f, 4.0f, 0.0f,   // normalized only
                                0.0f, 0.0f, 0.0f};  // zero row: stays 0 (norm clamped)
  const Tensor acts = host_i32({static_cast<int32_t>(ops::PoolActivation::kSoftmax),
                                static_cast<int32_t>(ops::PoolActivation::kSigmoid),
                                static_cast<int32_t>(ops::PoolActivation::kNone),
                                static_cast<int32_t>(ops::PoolActivation::kNone)});
  const Tensor norms = host_i32({0, 1, 1, 1});
  for (Device d : devices()) {
    Tensor x = Tensor::empty({4, 3}, DType::kF32);
    std::copy(rows.begin(), rows.end(), x.data<float>());
    Tensor xd = x.copy_to(d);
    ops::pool_finish(ops::default_context(d), xd, acts.copy_to(d), norms.copy_to(d));
    const Tensor out = xd.copy_to(Device::kCPU);
    const float* y = out.data<float>();
    const double z = std::exp(1.0) + std::exp(2.0) + std::exp(3.0);
    EXPECT_NEAR(y[0], std::exp(1.0) / z, 1e-6);
    EXPECT_NEAR(y[2], std::exp(3.0) / z, 1e-6);
    const double s0 = 0.5, s1 = 1 / (1 + std::exp(-2.0)), s2 = 1 / (1 + std::exp(2.0));
    const double n = std::sqrt(s0 * s0 + s1 * s1 + s2 * s2);
    EXPECT_NEAR(y[3], s0 / n, 1e-6);
    EXPECT_NEAR(y[5], s2 / n, 1e-6);
    EXPECT_NEAR(y[6], 0.6, 1e-6);
    EXPECT_NEAR(y[7], 0.8, 1e-6);
    EXPECT_EQ(y[9], 0.0f);
  }
}

}  // namespace
}  // namespace fastlm
