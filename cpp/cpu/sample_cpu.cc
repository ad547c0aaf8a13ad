#include "cpu/sample_cpu.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

#include "cpu/cpu_common.h"  // fast_exp: the one exp approximation of the CPU bodies

namespace fastlm::cpu {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ULL;

float row_max(const float* row, int vocab) {
  float m = kNegInf;
#pragma omp simd reduction(max : m)
  for (int i = 0; i < vocab; ++i) m = std::max(m, row[i]);
  return m;
}

// sum(exp(row - m)), masked (-inf) entries counting 0; writes the terms to `exps` if given.
double sum_exp(const float* row, int vocab, float m, float* exps) {
  double z = 0.0;
  if (exps != nullptr) {
#pragma omp simd reduction(+ : z)
    for (int i = 0; i < vocab; ++i) {
      exps[i] = row[i] == kNegInf ? 0.0f : cpu::fast_exp(row[i] - m);
      z += exps[i];
    }
  } else {
#pragma omp simd reduction(+ : z)
    for (int i = 0; i < vocab; ++i) z += row[i] == kNegInf ? 0.0f : cpu::fast_exp(row[i] - m);
  }
  return z;
}

// A token of the top-p cut bucket.
struct Candidate {
  float logit;
  float weight;  // exp(logit - max)
  int32_t token;
};

// Scratch buffers one thread reuses across the rows it processes.
struct Scratch {
  std::vector<float> exps;  // exp(logit - max), 0 for masked tokens
  std::vector<float> values;
  std::vector<Candidate> candidates;
  std::vector<double> bucket_mass;
  std::vector<float> raw;  // the row as given, for raw logprobs
};

// One row's scalar parameters.
struct RowParams {
  float temperature;
  int top_k;
  float top_p;
  float min_p;
};

// Better = larger value, then lower index: the order of argmax, top-N and top-p.
struct Better {
  const float* v;
  bool operator()(int32_t a, int32_t b) const { return v[a] > v[b] || (v[a] == v[b] && a < b); }
};

int32_t argmax(const float* row, int vocab) {
  int32_t best = 0;
  for (int32_t i = 1; i < vocab; ++i)
    if (row[i] > row[best]) best = i;
  return best;
}

// A row's logprobs before they are written out.
struct RowLogprobs {
  int32_t token = 0;
  float logprob = 0.0f;
  int rank = 0;                                // 1-based: tokens whose value is >= the token's
  std::vector<std::pair<int32_t, float>> top;  // descending, lower id first on ties
};

// Max and log-sum-exp of a row, the two numbers of its log_softmax.
struct Normalizer {
  float max = kNegInf;
  double log_z = 0.0;
};

Normalizer normalizer_of(const float* row, int vocab) {
  Normalizer n;
  n.max = row_max(row, vocab);
  if (n.max != kNegInf) n.log_z = std::log(sum_exp(row, vocab, n.max, nullptr));
  return n;
}

// Logprobs of `token` under log_softmax(row): value, rank, and the top_n best tokens.
// O(vocab log top_n) with a bounded heap.
RowLogprobs logprobs_of(const float* row, int vocab, int32_t token, int top_n,
                        const Normalizer& norm) {
  auto logprob = [&](int32_t i) -> float {
    if (row[i] == kNegInf || norm.max == kNegInf) return kNegInf;
    return static_cast<float>(static_cast<double>(row[i]) - norm.max - norm.log_z);
  };
  RowLogprobs out;
  out.token = token;
  out.logprob = logprob(token);
  const float v = row[token];
  int rank = 0;
#pragma omp simd reduction(+ : rank)
  for (int i = 0; i < vocab; ++i) rank += row[i] >= v ? 1 : 0;
  out.rank = std::max(rank, 1);

  const int n = std::min(top_n, vocab);
  if (n > 0) {
    // Heap of the best n so far with the worst of them on top (Better as the "less").
    std::vector<int32_t> heap;
    heap.reserve(n);
    const Better better{row};
    for (int32_t i = 0; i < vocab; ++i) {
      if (static_cast<int>(heap.size()) < n) {
        heap.push_back(i);
        std::push_heap(heap.begin(), heap.end(), better);
      } else if (better(i, heap.front())) {
        std::pop_heap(heap.begin(), heap.end(), better);
        heap.back() = i;
        std::push_heap(heap.begin(), heap.end(), better);
      }
    }
    std::sort(heap.begin(), heap.end(), better);
    out.top.reserve(n);
    for (int32_t i : heap) out.top.emplace_back(i, logprob(i));
  }
  return out;
}

// Keeps the smallest set of most likely tokens whose mass reaches top_p; masks the rest in
// `row` and `exps`. No full sort: one pass histograms the mass by distance below the max
// (bucket 0 = the best tokens, kTopPBuckets = everything further than kTopPRange below), the
// bucket holding the cut is found by a scan, and only that bucket's tokens get sorted.
constexpr int kTopPBuckets = 2048;
constexpr float kTopPRange = 32.0f;  // exp(-32) ~ 1e-14: the tail bucket barely ever matters

void apply_top_p(float* row, int vocab, float top_p, float max, double z, Scratch& s) {
  constexpr float scale = kTopPBuckets / kTopPRange;
  // Monotone in the logit (each float op is), so buckets respect the order of logits.
  auto bucket_of = [&](float logit) {
    const float d = (max - logit) * scale;
    return d < static_cast<float>(kTopPBuckets) ? static_cast<int>(d) : kTopPBuckets;
  };
  std::vector<double>& mass = s.bucket_mass;
  mass.assign(kTopPBuckets + 1, 0.0);
  for (int i = 0; i < vocab; ++i)
    if (s.exps[i] > 0.0f) mass[bucket_of(row[i])] += s.exps[i];

  const double target = static_cast<double>(top_p) * z;
  double before = 0.0;  // mass of the buckets above the cut bucket
  int cut_bucket = 0;
  while (cut_bucket < kTopPBuckets && before + mass[cut_bucket] < target)
    before += mass[cut_bucket++];

  std::vector<Candidate>& c = s.candidates;
  c.clear();
  for (int32_t i = 0; i < vocab; ++i) {
    if (s.exps[i] == 0.0f) continue;
    const int b = bucket_of(row[i]);
    if (b == cut_bucket) {
      c.push_back({row[i], s.exps[i], i});
    } else if (b > cut_bucket) {
      row[i] = kNegInf;
      s.exps[i] = 0.0f;
    }
  }
  std::sort(c.begin(), c.end(), [](const Candidate& a, const Candidate& b) {
    return a.logit > b.logit || (a.logit == b.logit && a.token < b.token);
  });
  size_t kept = c.size();
  for (size_t j = 0; j < c.size(); ++j) {
    before += c[j].weight;
    if (before >= target) {
      kept = j + 1;
      break;
    }
  }
  for (size_t j = kept; j < c.size(); ++j) {
    row[c[j].token] = kNegInf;
    s.exps[c[j].token] = 0.0f;
  }
}

// Random sampling of a row already divided by the temperature. Leaves the processed logits in
// `row`, returns the drawn token and sets `norm` to the processed row's normalizer.
int32_t sample_random(float* row, int vocab, const RowParams& p, int64_t* rng, Scratch& s,
                      Normalizer& norm) {
  const float m = row_max(row, vocab);
  norm.max = m;
  if (m == kNegInf) return 0;  // every token masked: nothing to draw from

  // min_p: p_i < min_p * p_max  <=>  logit_i < max + log(min_p).
  if (p.min_p > 0.0f) {
    const float threshold = m + std::log(p.min_p);
    for (int i = 0; i < vocab; ++i) row[i] = row[i] < threshold ? kNegInf : row[i];
  }

  if (p.top_k > 0 && p.top_k < vocab) {
    s.values.clear();
    for (int i = 0; i < vocab; ++i)
      if (row[i] != kNegInf) s.values.push_back(row[i]);
    const size_t k = static_cast<size_t>(p.top_k);
    if (k < s.values.size()) {
      std::nth_element(s.values.begin(), s.values.begin() + (k - 1), s.values.end(),
                       std::greater<float>());
      const float kth = s.values[k - 1];  // ties with the k-th value are kept, as in vLLM
      for (int i = 0; i < vocab; ++i) row[i] = row[i] < kth ? kNegInf : row[i];
    }
  }

  // The max survives every mask above, so `m` stays the processed row's max.
  s.exps.resize(vocab);
  double z = sum_exp(row, vocab, m, s.exps.data());
  if (p.top_p < 1.0f) {
    apply_top_p(row, vocab, p.top_p, m, z, s);
    z = 0.0;
#pragma omp simd reduction(+ : z)
    for (int i = 0; i < vocab; ++i) z += s.exps[i];
  }
  norm.log_z = std::log(z);

  // Inverse CDF with one uniform: one generator step per token, whatever the vocabulary.
  const uint64_t draw = rng_draw(static_cast<uint64_t>(rng[0]), static_cast<uint64_t>(rng[1]));
  rng[1] += 1;
  const double u = static_cast<double>(draw >> 11) * 0x1.0p-53 * z;
  double acc = 0.0;
  int32_t last = 0;
  for (int32_t i = 0; i < vocab; ++i) {
    if (s.exps[i] == 0.0f) continue;
    acc += s.exps[i];
    last = i;
    if (acc > u) return i;
  }
  return last;  // rounding left u just past the total
}

}  // namespace

uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t rng_draw(uint64_t seed, uint64_t offset) { return mix64(seed + (offset + 1) * kGolden); }

namespace {

// Steps before the temperature: the allowed-token mask, bias and penalties (vLLM v1 order).
void apply_logits_processors(float* row, int vocab, const SampleArgs& a, int64_t r) {
  if (a.mask_rows[r] != 0) {
    const auto* words = reinterpret_cast<const uint32_t*>(a.bitmask + r * a.mask_words);
    for (int i = 0; i < vocab; ++i)
      if (((words[i >> 5] >> (i & 31)) & 1u) == 0) row[i] = kNegInf;
  }
  for (int32_t j = a.bias_offsets[r]; j < a.bias_offsets[r + 1]; ++j)
    row[a.bias_tokens[j]] += a.bias_values[j];

  const int32_t first = a.penalty_offsets[r], last = a.penalty_offsets[r + 1];
  const float rep = a.repetition_penalty[r];
  if (rep != 1.0f) {
    for (int32_t j = first; j < last; ++j) {
      const int32_t t = a.penalty_tokens[j];
      row[t] = row[t] > 0 ? row[t] / rep : row[t] * rep;
    }
  }
  const float freq = a.frequency_penalty[r], pres = a.presence_penalty[r];
  if (freq != 0.0f || pres != 0.0f) {
    for (int32_t j = first; j < last; ++j) {
      const int32_t count = a.penalty_counts[j];
      if (count == 0) continue;  // a prompt-only token
      const int32_t t = a.penalty_tokens[j];
      row[t] -= freq * static_cast<float>(count);
      row[t] -= pres;
    }
  }
}

void write_logprobs(const RowLogprobs& lp, int64_t r, int64_t top_n, float* logprob, int32_t* rank,
                    int32_t* top_tokens, float* top_logprobs) {
  logprob[r] = lp.logprob;
  rank[r] = lp.rank;
  for (int64_t j = 0; j < top_n; ++j) {
    const bool have = j < static_cast<int64_t>(lp.top.size());
    top_tokens[r * top_n + j] = have ? lp.top[j].first : -1;
    top_logprobs[r * top_n + j] = have ? lp.top[j].second : kNegInf;
  }
}

void sample_row(const SampleArgs& a, int64_t r, Scratch& s) {
  const int vocab = static_cast<int>(a.vocab);
  float* row = a.logits + r * a.vocab;
  const int num_logprobs = a.num_logprobs[r];
  bool raw = false, normalized = false;
  switch (static_cast<SampleLogprobsMode>(a.logprobs_mode[r])) {
    case SampleLogprobsMode::kRawLogprobs:
      raw = normalized = true;
      break;
    case SampleLogprobsMode::kProcessedLogprobs:
      normalized = true;
      break;
    case SampleLogprobsMode::kRawLogits:
      raw = true;
      break;
    case SampleLogprobsMode::kProcessedLogits:
      break;
  }
  const bool want_raw_logprobs = num_logprobs >= 0 && raw;
  if (want_raw_logprobs) s.raw.assign(row, row + vocab);

  apply_logits_processors(row, vocab, a, r);

  int32_t token = 0;
  std::optional<Normalizer> norm;
  const RowParams p{a.temperature[r], a.top_k[r], a.top_p[r], a.min_p[r]};
  if (p.temperature < kGreedyTemperature) {
    token = argmax(row, vocab);
  } else {
    const float t = p.temperature;
#pragma omp simd
    for (int i = 0; i < vocab; ++i) row[i] /= t;
    norm.emplace();
    token = sample_random(row, vocab, p, a.rng + 2 * r, s, *norm);
  }
  a.tokens[r] = token;
  if (num_logprobs >= 0) {
    const float* dist = want_raw_logprobs ? s.raw.data() : row;
    if (!normalized) {
      norm = Normalizer{0.0f, 0.0};  // the identity: report the logits themselves
    } else if (want_raw_logprobs || !norm) {
      norm = normalizer_of(dist, vocab);
    }
    const RowLogprobs lp = logprobs_of(dist, vocab, token, num_logprobs, *norm);
    write_logprobs(lp, r, a.top_n, a.logprob, a.rank, a.top_tokens, a.top_logprobs);
  }
}

}  // namespace

void sample(const SampleArgs& a) {
#pragma omp parallel if (a.rows > 1)
  {
    Scratch s;
#pragma omp for schedule(dynamic)
    for (int64_t r = 0; r < a.rows; ++r) sample_row(a, r, s);
  }
}

void score(const float* logits, int64_t rows, int64_t vocab, const int32_t* targets, int64_t top_n,
           float* logprob, int32_t* rank, int32_t* top_tokens, float* top_logprobs) {
  const int v = static_cast<int>(vocab);
#pragma omp parallel for schedule(dynamic) if (rows > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = logits + r * vocab;
    const RowLogprobs lp =
        logprobs_of(row, v, targets[r], static_cast<int>(top_n), normalizer_of(row, v));
    write_logprobs(lp, r, top_n, logprob, rank, top_tokens, top_logprobs);
  }
}

}  // namespace fastlm::cpu
