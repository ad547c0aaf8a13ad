// ops::sample and ops::score on hand-built metadata tensors, on every device this build has (CPU
// today): greedy and ties, top-k / top-p / min-p edges, penalties from the CSR token counts,
// the allowed-token bitmask and logit bias, seeded reproducibility (the generator state lives in
// the rng tensor), and the logprob / rank / top-N outputs against a log_softmax computed here.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "core/status.h"
#include "cpu/sample_cpu.h"
#include "ops/backend.h"
#include "ops/sample.h"

namespace fastlm {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

std::vector<Device> devices() {
  std::vector<Device> out;
  for (Device d : {Device::kCPU, Device::kCUDA})
    if (ops::device_available(d)) out.push_back(d);
  return out;
}

template <typename T>
Tensor host(const std::vector<T>& v, DType dtype, std::vector<int64_t> shape) {
  Tensor t = Tensor::empty(std::move(shape), dtype);
  std::copy(v.begin(), v.end(), t.data<T>());
  return t;
}

// R rows of metadata, every processing step off by default; tests edit the vectors.
struct Meta {
  int64_t rows, vocab;
  std::vector<float> temperature, top_p, min_p, rep, freq, pres;
  std::vector<int32_t> top_k, num_logprobs, mode, mask_rows, bitmask;
  std::vector<int64_t> rng;
  std::vector<int32_t> pen_off, pen_tok, pen_cnt, bias_off, bias_tok;
  std::vector<float> bias_val;

  Meta(int64_t r, int64_t v)
      : rows(r),
        vocab(v),
        temperature(r, 0.0f),
        top_p(r, 1.0f),
        min_p(r, 0.0f),
        rep(r, 1.0f),
        freq(r, 0.0f),
        pres(r, 0.0f),
        top_k(r, 0),
        num_logprobs(r, -1),
        mode(r, 0),
        mask_rows(r, 0),
        bitmask(r * ((v + 31) / 32), -1),
        rng(2 * r, 0),
        pen_off(r + 1, 0),
        bias_off(r + 1, 0) {}

  ops::SamplingTensors tensors(Device d) const {
    const int64_t r = rows, np = static_cast<int64_t>(pen_tok.size()),
                  nb = static_cast<int64_t>(bias_tok.size());
    ops::SamplingTensors t;
    t.temperature = host(temperature, DType::kF32, {r}).copy_to(d);
    t.top_k = host(top_k, DType::kI32, {r}).copy_to(d);
    t.top_p = host(top_p, DType::kF32, {r}).copy_to(d);
    t.min_p = host(min_p, DType::kF32, {r}).copy_to(d);
    t.repetition_penalty = host(rep, DType::kF32, {r}).copy_to(d);
    t.frequency_penalty = host(freq, DType::kF32, {r}).copy_to(d);
    t.presence_penalty = host(pres, DType::kF32, {r}).copy_to(d);
    t.rng = host(rng, DType::kI64, {r, 2}).copy_to(d);
    t.num_logprobs = host(num_logprobs, DType::kI32, {r}).copy_to(d);
    t.logprobs_mode = host(mode, DType::kI32, {r}).copy_to(d);
    t.mask_rows = host(mask_rows, DType::kI32, {r}).copy_to(d);
    t.bitmask = host(bitmask, DType::kI32, {r, (vocab + 31) / 32}).copy_to(d);
    t.penalty_offsets = host(pen_off, DType::kI32, {r + 1}).copy_to(d);
    t.penalty_tokens = host(pen_tok, DType::kI32, {np}).copy_to(d);
    t.penalty_counts = host(pen_cnt, DType::kI32, {np}).copy_to(d);
    t.bias_offsets = host(bias_off, DType::kI32, {r + 1}).copy_to(d);
    t.bias_tokens = host(bias_tok, DType::kI32, {nb}).copy_to(d);
    t.bias_values = host(bias_val, DType::kF32, {nb}).copy_to(d);
    return t;
  }
};

// What came back from one run, on the host.
struct Result {
  std::vector<float> logits;  // processed
  std::vector<int32_t> tokens, rank, top_tokens;
  std::vector<float> logprob, top_logprobs;
  std::vector<int64_t> rng;
};

Result run(Device d, const Meta& m, const std::vector<float>& logits, int64_t top_n = 0) {
  ExecContext& ctx = ops::default_context(d);
  Tensor x = host(logits, DType::kF32, {m.rows, m.vocab}).copy_to(d);
  ops::SamplingTensors t = m.tensors(d);
  ops::SampleOutputs o;
  o.tokens = Tensor::zeros({m.rows}, DType::kI32, d);
  o.logprob = Tensor::zeros({m.rows}, DType::kF32, d);
  o.rank = Tensor::zeros({m.rows}, DType::kI32, d);
  o.top_tokens = Tensor::zeros({m.rows, top_n}, DType::kI32, d);
  o.top_logprobs = Tensor::zeros({m.rows, top_n}, DType::kF32, d);
  ops::sample(ctx, x, t, o);
  auto back = [](const Tensor& src, auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const Tensor h = src.copy_to(Device::kCPU);
    return std::vector<T>(h.data<T>(), h.data<T>() + h.numel());
  };
  Result r;
  r.logits = back(x, static_cast<float*>(nullptr));
  r.tokens = back(o.tokens, static_cast<int32_t*>(nullptr));
  r.rank = back(o.rank, static_cast<int32_t*>(nullptr));
  r.top_tokens = back(o.top_tokens, static_cast<int32_t*>(nullptr));
  r.logprob = back(o.logprob, static_cast<float*>(nullptr));
  r.top_logprobs = back(o.top_logprobs, static_cast<float*>(nullptr));
  r.rng = back(t.rng, static_cast<int64_t*>(nullptr));
  return r;
}

double log_softmax(const std::vector<float>& row, int i) {
  double m = -kInf, z = 0;
  for (float v : row) m = std::max(m, static_cast<double>(v));
  for (float v : row) z += std::exp(v - m);
  return row[i] - m - std::log(z);
}

TEST(OpsSample, GreedyArgmaxTiesLogprobsAndTopN) {
  // Row 0: argmax 2, logprobs with top 3. Row 1: tie between 1 and 3 -> 1, top 1 (padded).
  // Row 2: no logprobs (its outputs stay untouched).
  const std::vector<float> logits{0.5f, 1.0f, 3.0f, 2.0f, -1.0f,  //
                                  0.0f, 4.0f, 1.0f, 4.0f, 2.0f,   //
                                  9.0f, 1.0f, 1.0f, 1.0f, 1.0f};
  Meta m(3, 5);
  m.num_logprobs = {3, 1, -1};
  m.rng = {11, 5, 12, 6, 13, 7};
  for (Device d : devices()) {
    const Result r = run(d, m, logits, 3);
    EXPECT_EQ(r.tokens, (std::vector<int32_t>{2, 1, 0}));
    EXPECT_EQ(r.rng, m.rng);  // greedy rows do not draw
    const std::vector<float> row0(logits.begin(), logits.begin() + 5);
    EXPECT_NEAR(r.logprob[0], log_softmax(row0, 2), 1e-5);
    EXPECT_EQ(r.rank[0], 1);
    EXPECT_EQ(std::vector<int32_t>(r.top_tokens.begin(), r.top_tokens.begin() + 3),
              (std::vector<int32_t>{2, 3, 1}));
    EXPECT_NEAR(r.top_logprobs[1], log_softmax(row0, 3), 1e-5);
    EXPECT_EQ(r.rank[1], 2);  // two tokens share the best value
    EXPECT_EQ(r.top_tokens[3], 1);
    EXPECT_EQ(r.top_tokens[4], -1);
    EXPECT_EQ(r.top_logprobs[5], -kInf);
    EXPECT_EQ(r.rank[2], 0);  // untouched
  }
}

TEST(OpsSample, TopKOneTopPTinyAndMinPOneAreArgmaxAndDrawOnce) {
  const std::vector<float> row{0.1f, 2.0f, 1.9f, 0.3f, -5.0f, 1.0f};
  std::vector<float> logits;
  for (int i = 0; i < 4; ++i) logits.insert(logits.end(), row.begin(), row.end());
  Meta m(4, 6);
  m.temperature = {1.0f, 0.7f, 2.0f, 1.0f};
  m.top_k = {1, 0, 0, 100};  // row 3: k beyond the vocabulary = off
  m.top_p = {1.0f, 1e-6f, 1.0f, 1.0f};
  m.min_p = {0.0f, 0.0f, 1.0f, 0.0f};
  m.rng = {1, 0, 2, 10, 3, 0, 4, 0};
  for (Device d : devices()) {
    const Result r = run(d, m, logits);
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(r.tokens[i], 1) << "row " << i;
      int finite = 0;
      for (int v = 0; v < 6; ++v) finite += r.logits[i * 6 + v] != -kInf;
      EXPECT_EQ(finite, 1) << "row " << i;
    }
    for (int v = 0; v < 6; ++v) EXPECT_NE(r.logits[3 * 6 + v], -kInf);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(r.rng[2 * i + 1], m.rng[2 * i + 1] + 1);
  }
}

TEST(OpsSample, DrawIsTheInverseCdfOfTheRowsOwnGenerator) {
  // Uniform row: the token is floor(u * V) with u from the row's (seed, offset), whatever the
  // other rows are.
  const int64_t V = 1000;
  const std::vector<float> logits(3 * V, 0.0f);
  Meta m(3, V);
  m.temperature = {1.0f, 1.0f, 0.5f};
  m.rng = {42, 0, 42, 3, 7, 0};
  for (Device d : devices()) {
    const Result r = run(d, m, logits);
    for (int i = 0; i < 3; ++i) {
      const uint64_t u = cpu::rng_draw(m.rng[2 * i], m.rng[2 * i + 1]);
      const double x = static_cast<double>(u >> 11) * 0x1.0p-53;
      EXPECT_EQ(r.tokens[i], static_cast<int32_t>(x * V)) << "row " << i;
    }
    // Same state, alone in a batch: same token.
    Meta one(1, V);
    one.temperature = {1.0f};
    one.rng = {42, 3};
    EXPECT_EQ(run(d, one, std::vector<float>(V, 0.0f)).tokens[0], r.tokens[1]);
  }
}

TEST(OpsSample, PenaltiesFromTokenCountsMaskAndBias) {
  // Row 0: repetition 2 on prompt-only token 0 (+) and output token 1 (-, count 2);
  //        frequency 0.5 and presence 0.25 on the output token only.
  // Row 1: mask allows tokens 1 and 3; bias +10 on 3 and on the masked 0 (stays -inf).
  const std::vector<float> logits{4.0f, -1.0f, 3.0f, 0.0f,  //
                                  5.0f, 1.0f,  2.0f, 0.0f};
  Meta m(2, 4);
  m.rep = {2.0f, 1.0f};
  m.freq = {0.5f, 0.0f};
  m.pres = {0.25f, 0.0f};
  m.pen_off = {0, 2, 2};
  m.pen_tok = {0, 1};
  m.pen_cnt = {0, 2};
  m.mask_rows = {0, 1};
  m.bitmask = {-1, (1 << 1) | (1 << 3)};
  m.bias_off = {0, 0, 2};
  m.bias_tok = {3, 0};
  m.bias_val = {10.0f, 10.0f};
  for (Device d : devices()) {
    const Result r = run(d, m, logits);
    EXPECT_FLOAT_EQ(r.logits[0], 2.0f);
    EXPECT_FLOAT_EQ(r.logits[1], -2.0f - 1.0f - 0.25f);
    EXPECT_FLOAT_EQ(r.logits[2], 3.0f);
    EXPECT_EQ(r.tokens[0], 2);
    EXPECT_EQ(r.logits[4], -kInf);
    EXPECT_EQ(r.logits[6], -kInf);
    EXPECT_FLOAT_EQ(r.logits[7], 10.0f);
    EXPECT_EQ(r.tokens[1], 3);
  }
}

TEST(OpsSample, RawAndProcessedLogprobModes) {
  const std::vector<float> row{1.0f, 2.0f, 3.0f};
  std::vector<float> logits;
  for (int i = 0; i < 3; ++i) logits.insert(logits.end(), row.begin(), row.end());
  Meta m(3, 3);
  m.num_logprobs = {0, 0, 0};
  m.mode = {static_cast<int32_t>(cpu::SampleLogprobsMode::kRawLogprobs),
            static_cast<int32_t>(cpu::SampleLogprobsMode::kProcessedLogprobs),
            static_cast<int32_t>(cpu::SampleLogprobsMode::kRawLogits)};
  m.mask_rows = {1, 1, 1};
  m.bitmask = {0b011, 0b011, 0b011};  // token 2 banned: greedy picks 1
  for (Device d : devices()) {
    const Result r = run(d, m, logits);
    EXPECT_EQ(r.tokens, (std::vector<int32_t>{1, 1, 1}));
    EXPECT_NEAR(r.logprob[0], log_softmax(row, 1), 1e-5);  // the raw row
    EXPECT_EQ(r.rank[0], 2);
    EXPECT_NEAR(r.logprob[1], log_softmax({1.0f, 2.0f}, 1), 1e-5);  // without the banned token
    EXPECT_EQ(r.rank[1], 1);
    EXPECT_FLOAT_EQ(r.logprob[2], 2.0f);  // the raw logit itself
  }
}

TEST(OpsSample, ScoreTargetsAndEntryChecks) {
  const std::vector<float> logits{0.0f, 1.0f, 2.0f, 5.0f, 1.0f, 0.0f};
  for (Device d : devices()) {
    ExecContext& ctx = ops::default_context(d);
    const Tensor x = host(logits, DType::kF32, {2, 3}).copy_to(d);
    ops::SampleOutputs o;
    o.logprob = Tensor::zeros({2}, DType::kF32, d);
    o.rank = Tensor::zeros({2}, DType::kI32, d);
    o.top_tokens = Tensor::zeros({2, 2}, DType::kI32, d);
    o.top_logprobs = Tensor::zeros({2, 2}, DType::kF32, d);
    ops::score(ctx, x, host(std::vector<int32_t>{0, 1}, DType::kI32, {2}).copy_to(d), o);
    const Tensor lp = o.logprob.copy_to(Device::kCPU), rk = o.rank.copy_to(Device::kCPU),
                 tt = o.top_tokens.copy_to(Device::kCPU);
    EXPECT_NEAR(lp.data<float>()[0], log_softmax({0.0f, 1.0f, 2.0f}, 0), 1e-5);
    EXPECT_EQ(rk.data<int32_t>()[0], 3);
    EXPECT_EQ(rk.data<int32_t>()[1], 2);
    EXPECT_EQ(tt.data<int32_t>()[0], 2);
    EXPECT_EQ(tt.data<int32_t>()[2], 0);
    EXPECT_EQ(tt.data<int32_t>()[3], 1);
    // Wrong target count, and a float32 target tensor: refused before any work.
    EXPECT_THROW(ops::score(ctx, x, host(std::vector<int32_t>{0}, DType::kI32, {1}).copy_to(d), o),
                 InvalidArgument);
    EXPECT_THROW(ops::score(ctx, x, host(std::vector<float>{0, 1}, DType::kF32, {2}).copy_to(d), o),
                 InvalidArgument);
  }
  // sample: an rng tensor of the wrong shape.
  Meta m(2, 3);
  ops::SamplingTensors t = m.tensors(Device::kCPU);
  t.rng = Tensor::zeros({2}, DType::kI64);
  Tensor x = host(logits, DType::kF32, {2, 3});
  ops::SampleOutputs o;
  o.tokens = Tensor::zeros({2}, DType::kI32);
  o.logprob = Tensor::zeros({2}, DType::kF32);
  o.rank = Tensor::zeros({2}, DType::kI32);
  o.top_tokens = Tensor::zeros({2, 0}, DType::kI32);
  o.top_logprobs = Tensor::zeros({2, 0}, DType::kF32);
  EXPECT_THROW(ops::sample(ops::default_context(Device::kCPU), x, t, o), InvalidArgument);
  t.rng = Tensor::zeros({2, 2}, DType::kI64);
  EXPECT_NO_THROW(ops::sample(ops::default_context(Device::kCPU), x, t, o));
}

}  // namespace
}  // namespace fastlm
