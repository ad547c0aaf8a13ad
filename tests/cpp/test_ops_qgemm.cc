// Quantized GEMM (cpu/qgemm_cpu.h) for every native format: against a dequantize-then-matmul
// reference (exact up to float rounding where the activations quantize exactly; within the
// activation quantization error otherwise), the scalar and AVX2 paths bit for bit, and every
// row of an M-row call bitwise equal to the same row computed alone (issue 15's invariance);
// ops::linear over a weight stacked from parts in different formats.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "core/qtype.h"
#include "cpu/isa.h"
#include "cpu/qblocks.h"
#include "cpu/qgemm_cpu.h"
#include "ops/backend.h"
#include "ops/ops.h"

namespace fastlm::cpu {
namespace {

constexpr QType kNative[] = {QType::kQ4_0, QType::kQ4_1,   QType::kQ5_0,  QType::kQ5_1,
                             QType::kQ8_0, QType::kQ3_K,   QType::kQ4_K,  QType::kQ5_K,
                             QType::kQ6_K, QType::kIQ4_NL, QType::kIQ4_XS};

void put_half(uint8_t* p, float v) {
  const uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}

// n rows of k elements: random bytes with valid, small f16 scales (and, for the formats the
// library quantizes, real quantized random weights).
std::vector<uint8_t> random_weights(QType t, int64_t n, int64_t k, std::mt19937& rng) {
  std::vector<uint8_t> w(qtype_row_bytes(t, k) * n);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  if (can_quantize(t)) {
    std::vector<float> f(n * k);
    for (float& v : f) v = u(rng);
    quantize_blocks(t, f.data(), w.data(), n * k);
    return w;
  }
  for (uint8_t& b : w) b = static_cast<uint8_t>(rng());
  const size_t bb = qtype_block_bytes(t);
  for (size_t off = 0; off < w.size(); off += bb) {
    switch (t) {
      case QType::kQ5_0:
        put_half(&w[off], 0.05f * u(rng));
        break;
      case QType::kQ5_1:
      case QType::kQ4_K:
      case QType::kQ5_K:
        put_half(&w[off], 0.05f * u(rng));
        put_half(&w[off + 2], 0.05f * u(rng));
        break;
      case QType::kQ6_K:  // ql, qh, 16 int8 scales, then d
        put_half(&w[off + 208], 0.002f * u(rng));
        break;
      case QType::kQ3_K:  // hmask, qs, 12 bytes of scales, then d
        put_half(&w[off + 108], 0.002f * u(rng));
        break;
      case QType::kIQ4_NL:  // d, then the indices
        put_half(&w[off], 0.0005f * u(rng));
        break;
      case QType::kIQ4_XS:  // d, 6-bit scales, indices
        put_half(&w[off], 0.00002f * u(rng));
        break;
      case QType::kQ4_0:
      case QType::kQ4_1:
      case QType::kQ8_0:
        break;
    }
  }
  return w;
}

int64_t k_for(QType t) { return qtype_block_elems(t) == 256 ? 512 : 96; }

std::vector<float> reference(const std::vector<float>& x, const std::vector<uint8_t>& w, QType t,
                             int64_t m, int64_t n, int64_t k) {
  std::vector<float> wf(n * k);
  dequantize_blocks(t, w.data(), wf.data(), n * k);
  std::vector<float> y(m * n);
  for (int64_t r = 0; r < m; ++r)
    for (int64_t c = 0; c < n; ++c) {
      double s = 0;
      for (int64_t i = 0; i < k; ++i) s += static_cast<double>(x[r * k + i]) * wf[c * k + i];
      y[r * n + c] = static_cast<float>(s);
    }
  return y;
}

class IsaGuard {
 public:
  IsaGuard() : saved_(active_isa()) {}
  ~IsaGuard() { set_isa(saved_); }

 private:
  Isa saved_;
};

TEST(OpsQgemm, ExactWhenActivationsQuantizeExactly) {
  // Integer activations with 32767 in every 32-block: d = 1, so the int16 blocks equal x and
  // only float rounding separates the kernel from the dequantized reference.
  std::mt19937 rng(1);
  for (QType t : kNative) {
    const int64_t m = 3, n = 37, k = k_for(t);
    const auto w = random_weights(t, n, k, rng);
    std::vector<float> x(m * k);
    for (int64_t i = 0; i < m * k; ++i)
      x[i] = (i % 32 == 5) ? 32767.0f : static_cast<float>(static_cast<int>(rng() % 65535) - 32767);
    std::vector<float> y(m * n);
    qgemm(x.data(), w.data(), t, nullptr, y.data(), m, n, k);
    const auto ref = reference(x, w, t, m, n, k);
    for (int64_t i = 0; i < m * n; ++i) {
      EXPECT_NEAR(y[i], ref[i], 1e-4f * (1.0f + std::fabs(ref[i])) * std::sqrt(float(k)))
          << qtype_name(t) << " at " << i;
    }
  }
}

TEST(OpsQgemm, MatchesDequantizedMatmulWithBias) {
  std::mt19937 rng(2);
  std::normal_distribution<float> g(0.0f, 1.0f);
  for (QType t : kNative) {
    const int64_t m = 5, n = 70, k = k_for(t);
    const auto w = random_weights(t, n, k, rng);
    std::vector<float> x(m * k), bias(n);
    for (float& v : x) v = g(rng);
    for (float& v : bias) v = g(rng);
    std::vector<float> y(m * n);
    qgemm(x.data(), w.data(), t, bias.data(), y.data(), m, n, k);
    auto ref = reference(x, w, t, m, n, k);
    // Activation rounding to int16 (relative step 1/65534 of each block max) bounds the error.
    double err = 0, mag = 0;
    for (int64_t r = 0; r < m; ++r)
      for (int64_t c = 0; c < n; ++c) {
        const double d = y[r * n + c] - (ref[r * n + c] + bias[c]);
        err += d * d;
        mag += static_cast<double>(ref[r * n + c]) * ref[r * n + c];
      }
    EXPECT_LT(std::sqrt(err / mag), 1e-4) << qtype_name(t);
  }
}

TEST(OpsQgemm, ScalarAndAvx2PathsAgreeBitwise) {
  if (detected_isa() < Isa::kAvx2) GTEST_FAIL() << "this test needs an AVX2 machine";
  IsaGuard guard;
  std::mt19937 rng(3);
  std::normal_distribution<float> g(0.0f, 1.0f);
  // m = 1..4 qlanes (weight rows in lanes, read as four streams spread over n, with a
  // remainder), m = 6 qlanes in tiles of 3, from 8 xtile (x rows in lanes) over groups of eight
  // rows, the rest through qlanes (17, 65) or a padded group (13).
  for (QType t : kNative)
    for (int64_t m : {1, 2, 3, 6, 13, 17, 65})
      for (int64_t n : {3, 8, 45, 64}) {
        const int64_t k = k_for(t);
        const auto w = random_weights(t, n, k, rng);
        std::vector<float> x(m * k), bias(n);
        for (float& v : x) v = g(rng);
        for (float& v : bias) v = g(rng);
        std::vector<float> ys(m * n), yv(m * n);
        set_isa(Isa::kScalar);
        EXPECT_STREQ(qgemm_path(), "scalar");
        qgemm(x.data(), w.data(), t, bias.data(), ys.data(), m, n, k);
        set_isa(Isa::kAvx2);
        EXPECT_STREQ(qgemm_path(), "avx2");
        qgemm(x.data(), w.data(), t, bias.data(), yv.data(), m, n, k);
        EXPECT_EQ(std::memcmp(ys.data(), yv.data(), ys.size() * sizeof(float)), 0)
            << qtype_name(t) << " M=" << m << " N=" << n;
      }
}

TEST(OpsQgemm, RowsDoNotDependOnM) {
  std::mt19937 rng(4);
  std::normal_distribution<float> g(0.0f, 1.0f);
  for (QType t : kNative) {
    const int64_t n = 160, k = k_for(t), max_m = 600;
    const auto w = random_weights(t, n, k, rng);
    std::vector<float> x(max_m * k), bias(n);
    for (float& v : x) v = g(rng);
    for (float& v : bias) v = g(rng);
    // Each row alone (GEMV) is the reference every batched call must reproduce bit for bit.
    std::vector<float> alone(max_m * n);
    for (int64_t r = 0; r < max_m; ++r)
      qgemm(x.data() + r * k, w.data(), t, bias.data(), alone.data() + r * n, 1, n, k);
    for (int64_t m : {2, 7, 16, 33, 100, 600}) {
      std::vector<float> y(m * n);
      qgemm(x.data(), w.data(), t, bias.data(), y.data(), m, n, k);
      EXPECT_EQ(std::memcmp(y.data(), alone.data(), y.size() * sizeof(float)), 0)
          << qtype_name(t) << " M=" << m;
    }
  }
}

TEST(OpsQgemm, RejectsBadShapesAndFormats) {
  std::vector<float> x(40), y(1);
  std::vector<uint8_t> w(1024);
  EXPECT_THROW(qgemm(x.data(), w.data(), QType::kQ4_1, nullptr, y.data(), 1, 1, 40), Error);
  EXPECT_THROW(qgemm(x.data(), w.data(), QType::kQ6_K, nullptr, y.data(), 1, 1, 32), Error);
}

TEST(OpsQgemm, QuantizersRoundTrip) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  std::vector<float> f(256), back(256);
  for (float& v : f) v = u(rng);
  for (QType t : {QType::kQ8_0, QType::kQ4_0, QType::kQ4_1}) {
    std::vector<uint8_t> q(qtype_row_bytes(t, 256));
    quantize_blocks(t, f.data(), q.data(), 256);
    dequantize_blocks(t, q.data(), back.data(), 256);
    // Half a step of the block's scale (plus the f16 rounding of the scale, times up to 127);
    // Q4_0 maps the signed extreme to -8, so the other side clips at +7 steps: a whole step.
    const float step = t == QType::kQ8_0 ? 2.0f / 127 : t == QType::kQ4_0 ? 2.0f / 8 : 4.0f / 15;
    const float tol = (t == QType::kQ4_0 ? 1.0f : 0.5f) * step * 1.15f;
    for (int i = 0; i < 256; ++i) EXPECT_NEAR(back[i], f[i], tol) << qtype_name(t);
  }
  std::vector<uint8_t> q(qtype_row_bytes(QType::kQ5_0, 256));
  EXPECT_THROW(quantize_blocks(QType::kQ5_0, f.data(), q.data(), 256), Error);
}

// A GGUF's q/k/v in different formats: ops::linear on the stacked weight gives each part's
// columns exactly what qgemm on that part alone gives (bias slices included), at any M.
TEST(OpsQgemm, StackedWeightRunsEachPartIntoItsColumns) {
  std::mt19937 rng(6);
  std::normal_distribution<float> g(0.0f, 1.0f);
  const int64_t k = 512;
  const QType types[] = {QType::kQ4_1, QType::kQ8_0, QType::kQ4_K};
  const int64_t rows[] = {40, 24, 20};
  const int64_t n = 84;
  std::vector<std::vector<uint8_t>> packed;
  std::vector<Weight> parts;
  for (int i = 0; i < 3; ++i) {
    packed.push_back(random_weights(types[i], rows[i], k, rng));
    Tensor bytes =
        Tensor::empty({rows[i], static_cast<int64_t>(qtype_row_bytes(types[i], k))}, DType::kU8);
    std::memcpy(bytes.data(), packed[i].data(), packed[i].size());
    parts.push_back(Weight::quantized(types[i], std::move(bytes), rows[i], k));
  }
  const Weight stacked = Weight::stacked(parts);
  ASSERT_TRUE(stacked.is_stacked());
  EXPECT_EQ(stacked.rows, n);
  EXPECT_EQ(stacked.nbytes(), packed[0].size() + packed[1].size() + packed[2].size());
  ExecContext& ctx = ops::default_context(Device::kCPU);
  Tensor bias = Tensor::empty({n}, DType::kF32);
  for (int64_t c = 0; c < n; ++c) bias.data<float>()[c] = g(rng);
  for (int64_t m : {1, 3, 17}) {
    Tensor x = Tensor::empty({m, k}, DType::kF32);
    for (int64_t i = 0; i < m * k; ++i) x.data<float>()[i] = g(rng);
    Tensor y = Tensor::empty({m, n}, DType::kF32);
    ops::linear(ctx, x, stacked, &bias, y);
    int64_t at = 0;
    for (int i = 0; i < 3; ++i) {
      std::vector<float> want(m * rows[i]);
      qgemm(x.data<float>(), packed[i].data(), types[i], bias.data<float>() + at, want.data(), m,
            rows[i], k);
      for (int64_t r = 0; r < m; ++r)
        EXPECT_EQ(std::memcmp(y.data<float>() + r * n + at, want.data() + r * rows[i],
                              rows[i] * sizeof(float)),
                  0)
            << qtype_name(types[i]) << " M=" << m << " row " << r;
      at += rows[i];
    }
  }
  // A part whose in_features disagree is refused.
  std::vector<Weight> bad = parts;
  bad[1].cols = 256;
  Tensor x = Tensor::empty({1, k}, DType::kF32);
  Tensor y = Tensor::empty({1, n}, DType::kF32);
  EXPECT_THROW(ops::linear(ctx, x, Weight::stacked(bad), nullptr, y), InvalidArgument);
}

}  // namespace
}  // namespace fastlm::cpu
