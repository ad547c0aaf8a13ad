#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <unordered_set>

#include "core/status.h"
#include "cpu/cpu_common.h"  // fast_exp: the one exp approximation of the CPU bodies
#include "model/whisper_timestamps.h"

namespace fastlm::engine {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kGreedyTemperature = 1e-5f;  // vLLM's _SAMPLING_EPS
constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ULL;

uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

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

// Scratch buffers one thread reuses across the rows it processes. `counts` and `seen` are
// all-zero between rows (each row clears what it set), so a row costs O(its tokens) there.
struct Scratch {
  std::vector<int32_t> counts;
  std::vector<uint8_t> seen;
  std::vector<float> exps;  // exp(logit - max), 0 for masked tokens
  std::vector<float> values;
  std::vector<Candidate> candidates;
  std::vector<double> bucket_mass;
  std::vector<float> raw;  // the row as given, for raw logprobs
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
TokenLogprobs logprobs_of(const float* row, int vocab, int32_t token, int top_n,
                          const Normalizer& norm) {
  auto logprob = [&](int32_t i) -> float {
    if (row[i] == kNegInf || norm.max == kNegInf) return kNegInf;
    return static_cast<float>(static_cast<double>(row[i]) - norm.max - norm.log_z);
  };
  TokenLogprobs out;
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

bool in_vocab(int32_t t, int vocab) { return t >= 0 && t < vocab; }

// Steps before the temperature: masks, bans, bias and penalties (vLLM v1 order).
void apply_logits_processors(float* row, int vocab, const SampleInput& in,
                             const std::vector<int32_t>& eos_ids, Scratch& s) {
  const sched::SamplingParams& p = *in.params;
  static const std::vector<int32_t> kEmpty;
  const std::vector<int32_t>& prompt = in.prompt_token_ids ? *in.prompt_token_ids : kEmpty;
  const std::vector<int32_t>& output = in.output_token_ids ? *in.output_token_ids : kEmpty;

  if (in.token_bitmask != nullptr) {
    const auto* words = reinterpret_cast<const uint32_t*>(in.token_bitmask);
    for (int i = 0; i < vocab; ++i)
      if (((words[i >> 5] >> (i & 31)) & 1u) == 0) row[i] = kNegInf;
  }

  if (!p.allowed_token_ids.empty()) {
    std::vector<std::pair<int32_t, float>> kept;
    kept.reserve(p.allowed_token_ids.size());
    for (int32_t t : p.allowed_token_ids) kept.emplace_back(t, row[t]);
    std::fill(row, row + vocab, kNegInf);
    for (const auto& [t, v] : kept) row[t] = v;
  }

  // A bad word is banned once the output ends with all but its last token.
  for (const auto& word : p.bad_words) {
    const size_t prefix = word.size() - 1;
    if (prefix > output.size()) continue;
    if (std::equal(word.begin(), word.begin() + prefix, output.end() - prefix))
      row[word.back()] = kNegInf;
  }

  if (output.empty())
    for (int32_t t : p.begin_suppress_tokens) row[t] = kNegInf;

  if (p.timestamp_begin >= 0)
    model::apply_whisper_timestamp_rules(row, vocab, output, p.timestamp_begin,
                                         eos_ids.empty() ? -1 : eos_ids.front(),
                                         p.max_initial_timestamp_index);

  if (static_cast<int>(output.size()) < p.min_tokens) {
    for (int32_t t : p.stop_token_ids)
      if (in_vocab(t, vocab)) row[t] = kNegInf;
    if (!p.ignore_eos)  // with ignore_eos, EOS does not stop the request (vLLM keeps it too)
      for (int32_t t : eos_ids) row[t] = kNegInf;
  }

  for (const auto& [t, bias] : p.logit_bias) row[t] += bias;

  if (p.repetition_penalty != 1.0f) {
    if (s.seen.empty()) s.seen.assign(vocab, 0);
    const float r = p.repetition_penalty;
    auto penalize = [&](int32_t t) {
      if (s.seen[t]) return;
      s.seen[t] = 1;
      row[t] = row[t] > 0 ? row[t] / r : row[t] * r;
    };
    for (int32_t t : prompt) penalize(t);
    for (int32_t t : output) penalize(t);
    for (int32_t t : prompt) s.seen[t] = 0;
    for (int32_t t : output) s.seen[t] = 0;
  }

  if (p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f) {
    if (s.counts.empty()) s.counts.assign(vocab, 0);
    for (int32_t t : output) ++s.counts[t];
    for (int32_t t : output) {
      if (s.counts[t] == 0) continue;  // already applied for this token
      row[t] -= p.frequency_penalty * static_cast<float>(s.counts[t]);
      row[t] -= p.presence_penalty;
      s.counts[t] = 0;
    }
  }
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
int32_t sample_random(float* row, int vocab, const sched::SamplingParams& p, RandomState& rng,
                      Scratch& s, Normalizer& norm) {
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
  const double u = rng.next_uniform() * z;
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

SampleResult sample_row(float* row, int vocab, const SampleInput& in,
                        const std::vector<int32_t>& eos_ids, Scratch& s) {
  const sched::SamplingParams& p = *in.params;
  bool raw = false, normalized = false;
  switch (p.logprobs_mode) {
    case sched::LogprobsMode::kRawLogprobs:
      raw = normalized = true;
      break;
    case sched::LogprobsMode::kProcessedLogprobs:
      normalized = true;
      break;
    case sched::LogprobsMode::kRawLogits:
      raw = true;
      break;
    case sched::LogprobsMode::kProcessedLogits:
      break;
  }
  const bool want_raw_logprobs = p.logprobs >= 0 && raw;
  if (want_raw_logprobs) s.raw.assign(row, row + vocab);

  apply_logits_processors(row, vocab, in, eos_ids, s);

  SampleResult result;
  std::optional<Normalizer> norm;
  if (p.temperature < kGreedyTemperature) {
    result.token = argmax(row, vocab);
  } else {
    const float t = p.temperature;
#pragma omp simd
    for (int i = 0; i < vocab; ++i) row[i] /= t;
    norm.emplace();
    result.token = sample_random(row, vocab, p, *in.rng, s, *norm);
  }
  if (p.logprobs >= 0) {
    const float* dist = want_raw_logprobs ? s.raw.data() : row;
    if (!normalized) {
      norm = Normalizer{0.0f, 0.0};  // the identity: report the logits themselves
    } else if (want_raw_logprobs || !norm) {
      norm = normalizer_of(dist, vocab);
    }
    result.logprobs = logprobs_of(dist, vocab, result.token, p.logprobs, *norm);
  }
  return result;
}

}  // namespace

uint64_t RandomState::next_u64() { return mix64(seed + (++offset) * kGolden); }

double RandomState::next_uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }

Sampler::Sampler(std::vector<int32_t> eos_token_ids, int vocab_size, uint64_t seed)
    : eos_token_ids_(std::move(eos_token_ids)), vocab_size_(vocab_size), seed_(seed) {
  FASTLM_CHECK_ARG(vocab_size > 0, "sampler: vocab_size must be positive, got ", vocab_size);
  for (int32_t t : eos_token_ids_)
    FASTLM_CHECK_ARG(in_vocab(t, vocab_size), "sampler: eos token id ", t,
                     " outside the vocabulary of ", vocab_size);
}

RandomState Sampler::make_rng(std::optional<uint64_t> seed) {
  if (seed) return RandomState{*seed, 0};
  const uint64_t n = num_rngs_made_.fetch_add(1, std::memory_order_relaxed);
  // Spread the engine seed stream away from small user seeds (0, 1, 42...).
  return RandomState{mix64(mix64(seed_) ^ (n + 1) * kGolden), 0};
}

void Sampler::validate(const sched::SamplingParams& p) const {
  const int v = vocab_size_;
  FASTLM_CHECK_ARG(std::isfinite(p.temperature) && p.temperature >= 0.0f,
                   "temperature must be >= 0, got ", p.temperature);
  FASTLM_CHECK_ARG(p.top_p > 0.0f && p.top_p <= 1.0f, "top_p must be in (0, 1], got ", p.top_p);
  FASTLM_CHECK_ARG(p.top_k >= -1, "top_k must be -1 or 0 (disable), or at least 1, got ", p.top_k);
  FASTLM_CHECK_ARG(p.min_p >= 0.0f && p.min_p <= 1.0f, "min_p must be in [0, 1], got ", p.min_p);
  FASTLM_CHECK_ARG(p.presence_penalty >= -2.0f && p.presence_penalty <= 2.0f,
                   "presence_penalty must be in [-2, 2], got ", p.presence_penalty);
  FASTLM_CHECK_ARG(p.frequency_penalty >= -2.0f && p.frequency_penalty <= 2.0f,
                   "frequency_penalty must be in [-2, 2], got ", p.frequency_penalty);
  FASTLM_CHECK_ARG(std::isfinite(p.repetition_penalty) && p.repetition_penalty > 0.0f,
                   "repetition_penalty must be > 0, got ", p.repetition_penalty);
  FASTLM_CHECK_ARG(p.min_tokens >= 0, "min_tokens must be >= 0, got ", p.min_tokens);
  FASTLM_CHECK_ARG(p.logprobs >= -1, "logprobs must be >= 0 (or -1 for none), got ", p.logprobs);
  FASTLM_CHECK_ARG(p.prompt_logprobs >= -1, "prompt_logprobs must be >= 0 (or -1 for none), got ",
                   p.prompt_logprobs);
  for (int32_t t : p.allowed_token_ids)
    FASTLM_CHECK_ARG(in_vocab(t, v), "allowed_token_ids contains out-of-vocab token id ", t);
  for (const auto& [t, bias] : p.logit_bias) {
    FASTLM_CHECK_ARG(in_vocab(t, v), "logit_bias contains out-of-vocab token id ", t);
    FASTLM_CHECK_ARG(std::isfinite(bias), "logit_bias for token ", t, " is not finite");
  }
  for (int32_t t : p.begin_suppress_tokens)
    FASTLM_CHECK_ARG(in_vocab(t, v), "begin_suppress_tokens contains out-of-vocab token id ", t);
  FASTLM_CHECK_ARG(p.timestamp_begin < 0 || (p.timestamp_begin > 0 && p.timestamp_begin < v),
                   "timestamp_begin ", p.timestamp_begin, " is not a token id of the vocabulary");
  for (const auto& word : p.bad_words) {
    FASTLM_CHECK_ARG(!word.empty(), "bad_words contains an empty token sequence");
    for (int32_t t : word)
      FASTLM_CHECK_ARG(in_vocab(t, v), "bad_words contains out-of-vocab token id ", t);
  }
  // stop_token_ids outside the vocabulary are legal: they can never be produced.
}

std::vector<SampleResult> Sampler::sample(float* logits, int rows,
                                          const std::vector<SampleInput>& inputs) {
  FASTLM_CHECK_ARG(rows >= 0 && static_cast<size_t>(rows) == inputs.size(), "sampler: ", rows,
                   " logits rows for ", inputs.size(), " inputs");
  // Validate everything up front: nothing may throw inside the parallel region.
  std::unordered_set<const RandomState*> rngs;
  for (const SampleInput& in : inputs) {
    FASTLM_CHECK_ARG(in.params != nullptr, "sampler: input without sched::SamplingParams");
    validate(*in.params);
    if (in.params->temperature >= kGreedyTemperature) {
      FASTLM_CHECK_ARG(in.rng != nullptr, "sampler: random sampling needs a RandomState");
      FASTLM_CHECK_ARG(rngs.insert(in.rng).second, "sampler: two rows share one RandomState");
    }
    // Penalties index per-token tables by these ids.
    const sched::SamplingParams& p = *in.params;
    const bool penalized =
        p.repetition_penalty != 1.0f || p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f;
    if (penalized) {
      for (const auto* ids : {in.prompt_token_ids, in.output_token_ids})
        if (ids != nullptr)
          for (int32_t t : *ids)
            FASTLM_CHECK_ARG(in_vocab(t, vocab_size_), "sampler: token id ", t,
                             " outside the vocabulary of ", vocab_size_);
    }
  }

  std::vector<SampleResult> results(rows);
  const int vocab = vocab_size_;
#pragma omp parallel if (rows > 1)
  {
    Scratch s;
#pragma omp for schedule(dynamic)
    for (int i = 0; i < rows; ++i)
      results[i] =
          sample_row(logits + static_cast<size_t>(i) * vocab, vocab, inputs[i], eos_token_ids_, s);
  }
  return results;
}

std::vector<TokenLogprobs> Sampler::score(const float* logits, int rows, int vocab,
                                          const int32_t* targets, int top_n) {
  FASTLM_CHECK_ARG(rows >= 0 && vocab > 0, "score: bad shape [", rows, ", ", vocab, "]");
  FASTLM_CHECK_ARG(top_n >= 0, "score: top_n must be >= 0, got ", top_n);
  for (int i = 0; i < rows; ++i)
    FASTLM_CHECK_ARG(in_vocab(targets[i], vocab), "score: target token ", targets[i],
                     " outside the vocabulary of ", vocab);
  std::vector<TokenLogprobs> out(rows);
#pragma omp parallel for schedule(dynamic) if (rows > 1)
  for (int i = 0; i < rows; ++i) {
    const float* row = logits + static_cast<size_t>(i) * vocab;
    out[i] = logprobs_of(row, vocab, targets[i], top_n, normalizer_of(row, vocab));
  }
  return out;
}

}  // namespace fastlm::engine
