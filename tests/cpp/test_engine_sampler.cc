// Sampler tests: every processing step on handcrafted rows, distribution checks with fixed
// seeds (deterministic, so not flaky), reproducibility across batch compositions, logprobs
// against a reference log_softmax computed here.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <limits>
#include <numeric>
#include <random>
#include <set>

#include "core/status.h"
#include "engine/sampler.h"
#include "ops/backend.h"
#include "ops/sample.h"

namespace fastlm::engine {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

struct Req {
  sched::SamplingParams params;
  std::vector<int32_t> prompt;
  std::vector<int32_t> output;
  RandomState rng{7, 0};
  SampleInput input() { return {&params, &prompt, &output, &rng}; }
};

// Samples one row; `row` comes back processed.
SampleResult sample_one(Sampler& s, std::vector<float>& row, Req& r) {
  std::vector<SampleInput> in{r.input()};
  return s.sample(row.data(), 1, in)[0];
}

std::vector<double> log_softmax(const std::vector<float>& row) {
  double m = -kInf;
  for (float v : row) m = std::max(m, static_cast<double>(v));
  double z = 0;
  for (float v : row) z += std::exp(v - m);
  std::vector<double> out;
  for (float v : row) out.push_back(v - m - std::log(z));
  return out;
}

std::vector<float> logs(const std::vector<double>& probs) {
  std::vector<float> out;
  for (double p : probs) out.push_back(static_cast<float>(std::log(p)));
  return out;
}

// Indices with a finite processed logit.
std::set<int> support(const std::vector<float>& row) {
  std::set<int> out;
  for (int i = 0; i < static_cast<int>(row.size()); ++i)
    if (row[i] != -kInf) out.insert(i);
  return out;
}

// Processed support after random sampling with `p` on `row`.
std::set<int> support_after(std::vector<float> row, sched::SamplingParams p) {
  Sampler s({}, static_cast<int>(row.size()));
  Req r;
  r.params = p;
  const SampleResult res = sample_one(s, row, r);
  const std::set<int> sup = support(row);
  EXPECT_TRUE(sup.count(res.token));
  return sup;
}

// Chi-square statistic of `n` draws against probabilities `probs`.
double chi_square(const std::vector<float>& logits, float temperature,
                  const std::vector<double>& probs, int n, uint64_t seed) {
  Sampler s({}, static_cast<int>(logits.size()));
  Req r;
  r.params.temperature = temperature;
  r.rng = s.make_rng(seed);
  std::vector<int> counts(logits.size(), 0);
  for (int i = 0; i < n; ++i) {
    std::vector<float> row = logits;
    ++counts[sample_one(s, row, r).token];
  }
  double chi = 0;
  for (size_t i = 0; i < probs.size(); ++i) {
    const double expected = probs[i] * n;
    chi += (counts[i] - expected) * (counts[i] - expected) / expected;
  }
  return chi;
}

std::vector<double> softmax(const std::vector<float>& logits, float temperature) {
  std::vector<float> scaled;
  for (float v : logits) scaled.push_back(v / temperature);
  std::vector<double> out;
  for (double lp : log_softmax(scaled)) out.push_back(std::exp(lp));
  return out;
}

TEST(Sampler, GreedyPicksArgmaxWithoutDrawing) {
  Sampler s({}, 6);
  Req r;
  r.params.temperature = 0.0f;
  std::vector<float> row{0.1f, -2.0f, 4.0f, 3.9f, 0.0f, 1.0f};
  EXPECT_EQ(sample_one(s, row, r).token, 2);
  EXPECT_EQ(r.rng.offset, 0u);
  // Below vLLM's 1e-5 epsilon still counts as greedy.
  r.params.temperature = 1e-6f;
  row = {0.1f, 5.0f, 4.0f, 3.9f, 0.0f, 1.0f};
  EXPECT_EQ(sample_one(s, row, r).token, 1);
  EXPECT_EQ(r.rng.offset, 0u);
}

TEST(Sampler, GreedyTiesPickLowestIndex) {
  Sampler s({}, 5);
  Req r;
  r.params.temperature = 0.0f;
  std::vector<float> row{1.0f, 3.0f, 3.0f, 2.0f, 3.0f};
  EXPECT_EQ(sample_one(s, row, r).token, 1);
}

TEST(Sampler, RandomDrawAdvancesGeneratorOnce) {
  Sampler s({}, 1000);
  Req r;
  std::vector<float> row(1000, 0.0f);
  sample_one(s, row, r);
  EXPECT_EQ(r.rng.offset, 1u);
}

TEST(Sampler, TemperatureMatchesSoftmaxDistribution) {
  const std::vector<float> logits{1.0f, 0.5f, -0.3f, 2.0f, 0.0f};
  const int n = 20000;
  // df = 4: P(chi2 > 18.47) = 0.001. The draws are seeded, so this is deterministic.
  for (float t : {0.7f, 1.0f, 1.5f}) {
    EXPECT_LT(chi_square(logits, t, softmax(logits, t), n, 11), 18.47) << "temperature " << t;
    // ...and the check can tell temperatures apart.
    EXPECT_GT(chi_square(logits, t, softmax(logits, t * 1.3f), n, 11), 50.0) << t;
  }
}

TEST(Sampler, TopKKeepsExactlyKBest) {
  const std::vector<float> row{0.3f, 2.0f, -1.0f, 1.5f, 0.1f, 3.0f, -0.5f, 0.9f, 1.2f, -2.0f};
  sched::SamplingParams p;
  p.top_k = 3;
  EXPECT_EQ(support_after(row, p), (std::set<int>{1, 3, 5}));
  p.top_k = 1;
  EXPECT_EQ(support_after(row, p), (std::set<int>{5}));
  for (int off : {0, -1, 10, 11}) {
    p.top_k = off;
    EXPECT_EQ(support_after(row, p).size(), 10u) << "top_k " << off;
  }
  // Ties with the k-th value are kept (vLLM masks logits < k-th value).
  p.top_k = 1;
  EXPECT_EQ(support_after({1.0f, 2.0f, 2.0f, 0.0f}, p), (std::set<int>{1, 2}));
}

TEST(Sampler, TopKProcessedLogitsAndDraws) {
  const std::vector<float> logits{0.3f, 2.0f, -1.0f, 1.5f, 0.1f, 3.0f, -0.5f, 0.9f, 1.2f, -2.0f};
  Sampler s({}, 10);
  Req r;
  r.params.top_k = 3;
  r.params.temperature = 0.5f;
  std::set<int> drawn;
  for (int i = 0; i < 300; ++i) {
    std::vector<float> row = logits;
    drawn.insert(sample_one(s, row, r).token);
    if (i == 0) {
      for (int j : {1, 3, 5}) EXPECT_FLOAT_EQ(row[j], logits[j] / 0.5f);
    }
  }
  EXPECT_EQ(drawn, (std::set<int>{1, 3, 5}));
}

// probabilities 0.5, 0.05, 0.25, 0.125, 0.075
const std::vector<float> kFive = logs({0.5, 0.05, 0.25, 0.125, 0.075});

TEST(Sampler, TopPKeepsSmallestSetReachingMass) {
  sched::SamplingParams p;
  p.top_p = 0.4f;
  EXPECT_EQ(support_after(kFive, p), (std::set<int>{0}));
  p.top_p = 0.7f;
  EXPECT_EQ(support_after(kFive, p), (std::set<int>{0, 2}));
  p.top_p = 0.8f;
  EXPECT_EQ(support_after(kFive, p), (std::set<int>{0, 2, 3}));
  p.top_p = 0.9f;
  EXPECT_EQ(support_after(kFive, p), (std::set<int>{0, 2, 3, 4}));
  p.top_p = 0.99f;
  EXPECT_EQ(support_after(kFive, p).size(), 5u);
  p.top_p = 1e-6f;  // always at least one token
  EXPECT_EQ(support_after(kFive, p), (std::set<int>{0}));
}

TEST(Sampler, TopPOnLargeVocabMatchesFullSort) {
  // Several thousand candidates spread over many histogram buckets; the quantized case puts
  // ties (broken by lower token id) around the cut.
  const int vocab = 5000;
  for (float stddev : {1.0f, 4.0f}) {
    for (bool quantized : {false, true}) {
      std::mt19937 gen(3);
      std::normal_distribution<float> normal(0.0f, stddev);
      std::vector<float> row(vocab);
      for (float& v : row) v = quantized ? std::round(normal(gen) * 2.0f) / 2.0f : normal(gen);
      const std::vector<double> lp = log_softmax(row);
      std::vector<int> order(vocab);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return row[a] > row[b]; });
      for (float top_p : {0.05f, 0.3f, 0.9f, 0.995f}) {
        std::set<int> expected;
        double mass = 0;
        for (int i : order) {
          if (mass >= top_p) break;
          expected.insert(i);
          mass += std::exp(lp[i]);
        }
        sched::SamplingParams p;
        p.top_p = top_p;
        EXPECT_EQ(support_after(row, p), expected)
            << "top_p " << top_p << " stddev " << stddev << " quantized " << quantized;
      }
    }
  }
}

TEST(Sampler, MinPDropsTokensBelowFractionOfMax) {
  sched::SamplingParams p;
  p.min_p = 0.2f;  // threshold 0.1
  EXPECT_EQ(support_after(kFive, p), (std::set<int>{0, 2, 3}));
  p.min_p = 0.12f;  // threshold 0.06
  EXPECT_EQ(support_after(kFive, p), (std::set<int>{0, 2, 3, 4}));
  p.min_p = 1.0f;
  EXPECT_EQ(support_after(kFive, p), (std::set<int>{0}));
}

TEST(Sampler, TopPAppliesToRenormalizedTopKAndMinP) {
  sched::SamplingParams p;
  p.top_p = 0.8f;  // alone: 0.5 + 0.25 < 0.8 -> three tokens
  EXPECT_EQ(support_after(kFive, p).size(), 3u);
  p.top_k = 3;  // renormalized 0.571, 0.286, 0.143 -> two tokens reach 0.8
  EXPECT_EQ(support_after(kFive, p), (std::set<int>{0, 2}));
  p.top_k = 0;
  p.min_p = 0.2f;  // same survivors as top_k = 3, applied before top_p
  EXPECT_EQ(support_after(kFive, p), (std::set<int>{0, 2}));
}

TEST(Sampler, PenaltiesExactEffect) {
  const std::vector<float> logits{2.0f, -1.0f, 0.5f, 3.0f, -2.0f, 1.0f};
  Sampler s({}, 6);
  auto run = [&](float rep, float freq, float pres) {
    Req r;
    r.params.temperature = 0.0f;  // the processed row is the penalized row
    r.params.repetition_penalty = rep;
    r.params.frequency_penalty = freq;
    r.params.presence_penalty = pres;
    r.prompt = {0, 1};
    r.output = {2, 4, 2};
    std::vector<float> row = logits;
    sample_one(s, row, r);
    return row;
  };
  // Repetition over prompt + output, once per token: > 0 divides, else multiplies.
  EXPECT_EQ(run(2.0f, 0, 0), (std::vector<float>{1.0f, -2.0f, 0.25f, 3.0f, -4.0f, 1.0f}));
  // Frequency: output counts only (token 2 twice).
  EXPECT_EQ(run(1.0f, 0.5f, 0), (std::vector<float>{2.0f, -1.0f, -0.5f, 3.0f, -2.5f, 1.0f}));
  // Presence: once per distinct output token.
  EXPECT_EQ(run(1.0f, 0, 0.25f), (std::vector<float>{2.0f, -1.0f, 0.25f, 3.0f, -2.25f, 1.0f}));
  // All three, in vLLM's order (repetition, frequency, presence).
  EXPECT_EQ(run(2.0f, 0.5f, 0.25f), (std::vector<float>{1.0f, -2.0f, -1.0f, 3.0f, -4.75f, 1.0f}));
  // Negative penalties reward instead.
  EXPECT_EQ(run(1.0f, -1.0f, 0), (std::vector<float>{2.0f, -1.0f, 2.5f, 3.0f, -1.0f, 1.0f}));
}

TEST(Sampler, LogitBiasAdds) {
  Sampler s({}, 3);
  Req r;
  r.params.temperature = 0.0f;
  r.params.logit_bias = {{0, 5.0f}, {2, -1.0f}};
  std::vector<float> row{1.0f, 2.0f, 3.0f};
  EXPECT_EQ(sample_one(s, row, r).token, 0);
  EXPECT_EQ(row, (std::vector<float>{6.0f, 2.0f, 2.0f}));
}

TEST(Sampler, AllowedTokenIdsMaskOthers) {
  Sampler s({}, 4);
  Req r;
  r.params.temperature = 0.0f;
  r.params.allowed_token_ids = {1, 3};
  std::vector<float> row{5.0f, 1.0f, 3.0f, -4.0f};
  EXPECT_EQ(sample_one(s, row, r).token, 1);
  EXPECT_EQ(row, (std::vector<float>{-kInf, 1.0f, -kInf, -4.0f}));
  r.params.temperature = 1.0f;
  for (int i = 0; i < 200; ++i) {
    row = {5.0f, 1.0f, 3.0f, -4.0f};
    const int t = sample_one(s, row, r).token;
    EXPECT_TRUE(t == 1 || t == 3);
  }
}

TEST(Sampler, TokenBitmaskMasksOthers) {
  Sampler s({}, 40);
  Req r;
  const std::vector<int32_t> mask{static_cast<int32_t>(1u << 1),
                                  static_cast<int32_t>((1u << 1) | (1u << 7))};  // 1, 33, 39
  std::vector<float> row(40, 0.0f);
  std::vector<SampleInput> in{r.input()};
  in[0].token_bitmask = mask.data();
  const int t = s.sample(row.data(), 1, in)[0].token;
  EXPECT_EQ(support(row), (std::set<int>{1, 33, 39}));
  EXPECT_TRUE(t == 1 || t == 33 || t == 39);
}

TEST(Sampler, BadWordsSingleAndMultiToken) {
  Sampler s({}, 10);
  auto banned = [&](std::vector<int32_t> output) {
    Req r;
    r.params.temperature = 0.0f;
    r.params.bad_words = {{2}, {5, 6, 7}, {9, 3}};
    r.output = std::move(output);
    std::vector<float> row(10, 1.0f);
    sample_one(s, row, r);
    std::set<int> out;
    for (int i = 0; i < 10; ++i)
      if (row[i] == -kInf) out.insert(i);
    return out;
  };
  EXPECT_EQ(banned({}), (std::set<int>{2}));  // single-token words: always
  EXPECT_EQ(banned({1, 5, 6}), (std::set<int>{2, 7}));
  EXPECT_EQ(banned({5, 6}), (std::set<int>{2, 7}));
  EXPECT_EQ(banned({5, 8}), (std::set<int>{2}));
  EXPECT_EQ(banned({6}), (std::set<int>{2}));
  EXPECT_EQ(banned({9}), (std::set<int>{2, 3}));
  EXPECT_EQ(banned({9, 1}), (std::set<int>{2}));
}

TEST(Sampler, MinTokensBansEosAndStopIds) {
  Sampler s({0, 4}, 6);
  auto banned = [&](int output_len, bool ignore_eos) {
    Req r;
    r.params.temperature = 0.0f;
    r.params.min_tokens = 2;
    r.params.ignore_eos = ignore_eos;
    r.params.stop_token_ids = {3, 100};  // 100: outside the vocabulary, harmless
    r.output.assign(output_len, 1);
    std::vector<float> row(6, 1.0f);
    sample_one(s, row, r);
    std::set<int> out;
    for (int i = 0; i < 6; ++i)
      if (row[i] == -kInf) out.insert(i);
    return out;
  };
  EXPECT_EQ(banned(0, false), (std::set<int>{0, 3, 4}));
  EXPECT_EQ(banned(1, false), (std::set<int>{0, 3, 4}));
  EXPECT_EQ(banned(2, false), (std::set<int>{}));
  EXPECT_EQ(banned(1, true), (std::set<int>{3}));  // EOS does not stop: not banned
}

// Logits of step `step` for a request: a fixed function of (request, step).
std::vector<float> step_logits(int request, int step, int vocab) {
  std::mt19937 gen(1000 * request + step);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> row(vocab);
  for (float& v : row) v = normal(gen);
  return row;
}

TEST(Sampler, SeededRequestIndependentOfBatch) {
  const int vocab = 500, steps = 25;
  sched::SamplingParams seeded;
  seeded.seed = 1234;
  seeded.temperature = 0.9f;
  seeded.top_p = 0.95f;
  seeded.top_k = 100;
  seeded.logprobs = 2;

  auto run_alone = [&](uint64_t engine_seed) {
    Sampler s({}, vocab, engine_seed);
    Req r;
    r.params = seeded;
    r.rng = s.make_rng(seeded.seed);
    for (int t = 0; t < steps; ++t) {
      std::vector<float> row = step_logits(0, t, vocab);
      r.output.push_back(sample_one(s, row, r).token);
    }
    return r.output;
  };
  const std::vector<int32_t> alone = run_alone(0);
  EXPECT_EQ(run_alone(99), alone);  // the engine's seed does not matter to seeded requests

  // The same request among others (unseeded random, greedy, penalized), at varying positions.
  Sampler s({}, vocab, 5);
  std::vector<Req> reqs(5);
  for (int i = 1; i < 5; ++i) {
    reqs[i].params.temperature = i == 2 ? 0.0f : 1.2f;
    reqs[i].params.repetition_penalty = i == 3 ? 1.3f : 1.0f;
    reqs[i].params.min_p = i == 4 ? 0.05f : 0.0f;
    reqs[i].rng = s.make_rng(std::nullopt);
  }
  reqs[0].params = seeded;
  reqs[0].rng = s.make_rng(seeded.seed);
  for (int t = 0; t < steps; ++t) {
    std::vector<int> order{0, 1, 2, 3, 4};
    std::rotate(order.begin(), order.begin() + t % 5, order.end());
    const int rows = 2 + t % 4;  // batch of 2..5 rows, request 0 always in it
    order.resize(rows);
    if (std::find(order.begin(), order.end(), 0) == order.end()) order.back() = 0;
    std::vector<float> logits;
    std::vector<SampleInput> in;
    for (int id : order) {
      const std::vector<float> row = step_logits(id, t, vocab);
      logits.insert(logits.end(), row.begin(), row.end());
      in.push_back(reqs[id].input());
    }
    const std::vector<SampleResult> res = s.sample(logits.data(), rows, in);
    for (int k = 0; k < rows; ++k) reqs[order[k]].output.push_back(res[k].token);
  }
  EXPECT_EQ(reqs[0].output, alone);
  EXPECT_EQ(reqs[0].rng.offset, static_cast<uint64_t>(steps));
}

TEST(Sampler, GeneratorsFromSeedStream) {
  Sampler a({}, 10, 1), b({}, 10, 2);
  const RandomState a0 = a.make_rng(std::nullopt), a1 = a.make_rng(std::nullopt);
  EXPECT_NE(a0.seed, a1.seed);
  EXPECT_NE(a0.seed, b.make_rng(std::nullopt).seed);
  EXPECT_EQ(a.make_rng(42).seed, b.make_rng(42).seed);
  RandomState x = a.make_rng(42), y = b.make_rng(42);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(x.next_u64(), y.next_u64());
  double sum = 0;
  for (int i = 0; i < 10000; ++i) {
    const double u = x.next_uniform();
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
  }
  EXPECT_NEAR(sum / 10000, 0.5, 0.01);
}

TEST(Sampler, ResultsIndependentOfThreadCount) {
  const int vocab = 3000, rows = 12;
  auto run = [&](int threads) {
    omp_set_num_threads(threads);
    Sampler s({0}, vocab, 17);
    std::vector<Req> reqs(rows);
    std::vector<float> logits;
    std::vector<SampleInput> in;
    for (int i = 0; i < rows; ++i) {
      reqs[i].params.temperature = 0.3f * (i % 4);
      reqs[i].params.top_p = i % 3 == 0 ? 0.8f : 1.0f;
      reqs[i].params.frequency_penalty = 0.5f;
      reqs[i].params.logprobs = 3;
      reqs[i].output = {1, 2, 3, static_cast<int32_t>(i)};
      reqs[i].rng = s.make_rng(std::nullopt);
      const std::vector<float> row = step_logits(i, 0, vocab);
      logits.insert(logits.end(), row.begin(), row.end());
      in.push_back(reqs[i].input());
    }
    std::vector<std::pair<int32_t, float>> out;
    for (const SampleResult& r : s.sample(logits.data(), rows, in))
      out.emplace_back(r.token, r.logprobs->logprob);
    return out;
  };
  const int saved = omp_get_max_threads();
  const auto one = run(1);
  const auto two = run(2);
  omp_set_num_threads(saved);
  EXPECT_EQ(one, two);
}

void expect_logprobs(const TokenLogprobs& lp, const std::vector<float>& dist, int top_n) {
  const std::vector<double> ref = log_softmax(dist);
  EXPECT_NEAR(lp.logprob, ref[lp.token], 1e-5);
  int rank = 0;
  for (double v : ref) rank += v >= ref[lp.token];
  EXPECT_EQ(lp.rank, rank);
  std::vector<int> order(dist.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return dist[a] > dist[b]; });
  ASSERT_EQ(static_cast<int>(lp.top.size()), top_n);
  for (int i = 0; i < top_n; ++i) {
    EXPECT_EQ(lp.top[i].first, order[i]);
    if (std::isinf(ref[order[i]]))
      EXPECT_EQ(lp.top[i].second, -kInf);
    else
      EXPECT_NEAR(lp.top[i].second, ref[order[i]], 1e-5);
  }
}

TEST(Sampler, ProcessedLogprobsMatchReference) {
  const int vocab = 50;
  Sampler s({}, vocab);
  for (int trial = 0; trial < 20; ++trial) {
    const std::vector<float> logits = step_logits(trial, 1, vocab);
    Req r;
    r.params.temperature = 0.6f;
    r.params.logprobs = 5;
    r.params.logprobs_mode = sched::LogprobsMode::kProcessedLogprobs;
    r.params.top_k = trial % 2 ? 10 : 0;
    r.rng = s.make_rng(trial);
    std::vector<float> row = logits;
    const SampleResult res = sample_one(s, row, r);
    ASSERT_TRUE(res.logprobs);
    EXPECT_EQ(res.logprobs->token, res.token);
    // Reference: temperature, then top-k masking, then log_softmax.
    std::vector<float> dist;
    for (float v : logits) dist.push_back(v / 0.6f);
    if (r.params.top_k > 0) {
      std::vector<float> sorted = dist;
      std::sort(sorted.rbegin(), sorted.rend());
      for (float& v : dist)
        if (v < sorted[9]) v = -kInf;
    }
    expect_logprobs(*res.logprobs, dist, 5);
  }
}

TEST(Sampler, RawLogprobsIgnoreProcessing) {
  const int vocab = 30;
  Sampler s({}, vocab);
  const std::vector<float> logits = step_logits(3, 3, vocab);
  Req r;
  r.params.temperature = 0.5f;
  r.params.top_k = 3;
  r.params.logit_bias = {{4, 3.0f}};
  EXPECT_EQ(r.params.logprobs_mode, sched::LogprobsMode::kRawLogprobs);  // vLLM's default
  r.params.logprobs = 4;
  r.rng = s.make_rng(3);
  std::vector<float> row = logits;
  const SampleResult res = sample_one(s, row, r);
  expect_logprobs(*res.logprobs, logits, 4);
}

// The logits modes report the logits themselves: raw ones as the model gave them, processed
// ones after bias, penalties, temperature and top-k (masked tokens -inf).
TEST(Sampler, LogitsModesReportLogits) {
  const int vocab = 30;
  Sampler s({}, vocab);
  const std::vector<float> logits = step_logits(5, 2, vocab);
  for (sched::LogprobsMode mode :
       {sched::LogprobsMode::kRawLogits, sched::LogprobsMode::kProcessedLogits}) {
    Req r;
    r.params.temperature = 0.5f;
    r.params.top_k = 3;
    r.params.logit_bias = {{4, 3.0f}};
    r.params.logprobs = 3;
    r.params.logprobs_mode = mode;
    r.rng = s.make_rng(9);
    std::vector<float> row = logits;
    const SampleResult res = sample_one(s, row, r);
    std::vector<float> expect = logits;
    if (mode == sched::LogprobsMode::kProcessedLogits) {
      expect[4] += 3.0f;
      for (float& v : expect) v /= 0.5f;
      std::vector<float> sorted = expect;
      std::sort(sorted.rbegin(), sorted.rend());
      for (float& v : expect)
        if (v < sorted[2]) v = -kInf;
    }
    EXPECT_NEAR(res.logprobs->logprob, expect[res.token], 1e-5);
    ASSERT_EQ(res.logprobs->top.size(), 3u);
    for (const auto& [tok, value] : res.logprobs->top) EXPECT_NEAR(value, expect[tok], 1e-5);
    EXPECT_GT(res.logprobs->top[0].second, 0.0f);  // not a log-probability
  }
}

TEST(Sampler, GreedyLogprobsArePenalizedDistribution) {
  Sampler s({}, 5);
  Req r;
  r.params.temperature = 0.0f;
  r.params.logprobs = 5;
  r.params.logprobs_mode = sched::LogprobsMode::kProcessedLogprobs;
  r.params.presence_penalty = 1.0f;
  r.output = {3};
  const std::vector<float> logits{0.5f, 1.0f, -1.0f, 1.5f, 0.0f};
  std::vector<float> row = logits;
  const SampleResult res = sample_one(s, row, r);
  EXPECT_EQ(res.token, 1);
  expect_logprobs(*res.logprobs, {0.5f, 1.0f, -1.0f, 0.5f, 0.0f}, 5);
  // Ties in the top list: lower token id first; rank counts the tie.
  EXPECT_EQ(res.logprobs->top[1].first, 0);
  EXPECT_EQ(res.logprobs->top[2].first, 3);
}

TEST(Sampler, LogprobsZeroGivesOnlySampledToken) {
  Sampler s({}, 8);
  Req r;
  r.params.logprobs = 0;
  std::vector<float> row = step_logits(1, 1, 8);
  const SampleResult res = sample_one(s, row, r);
  ASSERT_TRUE(res.logprobs);
  EXPECT_TRUE(res.logprobs->top.empty());
  r.params.logprobs = -1;
  row = step_logits(1, 1, 8);
  EXPECT_FALSE(sample_one(s, row, r).logprobs);
}

TEST(Sampler, ScoreGivesPromptLogprobs) {
  const int vocab = 40, rows = 6;
  std::vector<float> logits;
  std::vector<int32_t> targets;
  for (int i = 0; i < rows; ++i) {
    const std::vector<float> row = step_logits(i, 9, vocab);
    logits.insert(logits.end(), row.begin(), row.end());
    targets.push_back((7 * i) % vocab);
  }
  const std::vector<float> copy = logits;
  const std::vector<TokenLogprobs> out =
      Sampler::score(logits.data(), rows, vocab, targets.data(), 3);
  ASSERT_EQ(static_cast<int>(out.size()), rows);
  EXPECT_EQ(logits, copy);
  for (int i = 0; i < rows; ++i) {
    EXPECT_EQ(out[i].token, targets[i]);
    expect_logprobs(
        out[i], std::vector<float>(logits.begin() + i * vocab, logits.begin() + (i + 1) * vocab),
        3);
  }
  EXPECT_TRUE(Sampler::score(logits.data(), 1, vocab, targets.data(), 0)[0].top.empty());
  const int32_t bad = vocab;
  EXPECT_THROW(Sampler::score(logits.data(), 1, vocab, &bad, 0), InvalidArgument);
}

TEST(Sampler, RejectsInvalidParams) {
  Sampler s({}, 10);
  auto rejects = [&](auto edit) {
    sched::SamplingParams p;
    edit(p);
    EXPECT_THROW(s.validate(p), InvalidArgument);
    Req r;
    r.params = p;
    std::vector<float> row(10, 0.0f);
    EXPECT_THROW(sample_one(s, row, r), InvalidArgument);
  };
  rejects([](sched::SamplingParams& p) { p.temperature = -0.5f; });
  rejects([](sched::SamplingParams& p) { p.top_p = 0.0f; });
  rejects([](sched::SamplingParams& p) { p.top_p = 1.5f; });
  rejects([](sched::SamplingParams& p) { p.top_k = -2; });
  rejects([](sched::SamplingParams& p) { p.min_p = 1.5f; });
  rejects([](sched::SamplingParams& p) { p.repetition_penalty = 0.0f; });
  rejects([](sched::SamplingParams& p) { p.presence_penalty = 3.0f; });
  rejects([](sched::SamplingParams& p) { p.logit_bias = {{10, 1.0f}}; });
  rejects([](sched::SamplingParams& p) { p.allowed_token_ids = {-1}; });
  rejects([](sched::SamplingParams& p) { p.bad_words = {{}}; });
  rejects([](sched::SamplingParams& p) { p.bad_words = {{1, 12}}; });
  EXPECT_NO_THROW(s.validate(sched::SamplingParams{}));

  // Random rows need their own generator.
  Req a, b;
  std::vector<float> rows(20, 0.0f);
  std::vector<SampleInput> in{a.input(), b.input()};
  in[1].rng = in[0].rng;
  EXPECT_THROW(s.sample(rows.data(), 2, in), InvalidArgument);
  in[1].rng = nullptr;
  EXPECT_THROW(s.sample(rows.data(), 2, in), InvalidArgument);
  EXPECT_THROW(s.sample(rows.data(), 1, in), InvalidArgument);  // rows != inputs
  EXPECT_THROW(Sampler({10}, 10), InvalidArgument);
}

}  // namespace
}  // namespace fastlm::engine

namespace fastlm::engine {
namespace {

// The step's metadata is one staging block (one upload for a device backend), and the op's
// generator advance is read back from it.
TEST(SamplingBatch, TensorsAreViewsOfOneBlockAndRngReadsTheAdvancedCopy) {
  constexpr int kV = 100;
  sched::SamplingParams random;
  random.temperature = 1.0f;
  random.frequency_penalty = 0.5f;
  random.logit_bias = {{3, 1.0f}};
  sched::SamplingParams greedy;
  greedy.temperature = 0.0f;
  const std::vector<int32_t> prompt{1, 2, 3}, output{4};
  RandomState rng{7, 11};
  SamplingBatch sb;
  sb.begin(kV, nullptr);
  sb.add({&random, &prompt, &output, &rng, nullptr});
  sb.add({&greedy, &prompt, &output, nullptr, nullptr});
  EXPECT_EQ(sb.rng(0).offset, 11u);  // before tensors(): the row's own state
  ops::SamplingTensors& t = sb.tensors();
  const Tensor* all[] = {&t.temperature,
                         &t.top_k,
                         &t.top_p,
                         &t.min_p,
                         &t.repetition_penalty,
                         &t.frequency_penalty,
                         &t.presence_penalty,
                         &t.rng,
                         &t.num_logprobs,
                         &t.logprobs_mode,
                         &t.mask_rows,
                         &t.bitmask,
                         &t.penalty_offsets,
                         &t.penalty_tokens,
                         &t.penalty_counts,
                         &t.bias_offsets,
                         &t.bias_tokens,
                         &t.bias_values};
  auto lo = reinterpret_cast<uintptr_t>(t.temperature.data());
  uintptr_t hi = lo;
  size_t bytes = 0;
  for (const Tensor* x : all) {
    const auto p = reinterpret_cast<uintptr_t>(x->data());
    const size_t n = static_cast<size_t>(x->numel()) * dtype_size(x->dtype());
    lo = std::min(lo, p);
    hi = std::max(hi, p + n);
    bytes += n;
  }
  EXPECT_LT(hi - lo, bytes + 64 * std::size(all));  // contiguous up to the 64-byte padding
  EXPECT_EQ(t.penalty_tokens.numel(), 4);           // 1, 2, 3 from the prompt, 4 from the output
  std::vector<float> logits(2 * kV, 0.0f);
  Tensor view = Tensor::view(logits.data(), {2, kV}, DType::kF32);
  ops::sample(ops::default_context(Device::kCPU), view, t, sb.outputs());
  EXPECT_EQ(sb.rng(0).seed, 7u);
  EXPECT_EQ(sb.rng(0).offset, 12u);  // one draw, read from the staged copy the op advanced
  EXPECT_EQ(sb.token(1), 0);         // greedy over equal logits: the lowest id
}

}  // namespace
}  // namespace fastlm::engine
