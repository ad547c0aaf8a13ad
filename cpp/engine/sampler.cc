#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <unordered_set>

#include "core/status.h"
#include "cpu/sample_cpu.h"
#include "model/whisper_timestamps.h"
#include "ops/backend.h"

namespace fastlm::engine {

namespace {

constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ULL;

bool in_vocab(int32_t t, int vocab) { return t >= 0 && t < vocab; }

int32_t mode_of(sched::LogprobsMode m) {
  switch (m) {
    case sched::LogprobsMode::kRawLogprobs:
      return static_cast<int32_t>(cpu::SampleLogprobsMode::kRawLogprobs);
    case sched::LogprobsMode::kProcessedLogprobs:
      return static_cast<int32_t>(cpu::SampleLogprobsMode::kProcessedLogprobs);
    case sched::LogprobsMode::kRawLogits:
      return static_cast<int32_t>(cpu::SampleLogprobsMode::kRawLogits);
    case sched::LogprobsMode::kProcessedLogits:
      return static_cast<int32_t>(cpu::SampleLogprobsMode::kProcessedLogits);
  }
  throw Error("unknown logprobs mode");
}

template <typename T>
Tensor host_tensor(std::vector<T>& v, DType dtype, std::vector<int64_t> shape) {
  return Tensor::view(v.data(), std::move(shape), dtype);
}

}  // namespace

void SamplingBatch::begin(int vocab, const std::vector<int32_t>* eos_ids) {
  vocab_ = vocab;
  words_ = (vocab + 31) / 32;
  eos_ids_ = eos_ids;
  timestamp_rows_.clear();
  staged_ = false;
  if (static_cast<int>(count_of_.size()) != vocab) {
    count_of_.assign(vocab, 0);
    listed_.assign(vocab, 0);
  }
  for (auto* v :
       {&temperature_, &top_p_, &min_p_, &repetition_, &frequency_, &presence_, &bias_values_})
    v->clear();
  for (auto* v : {&top_k_, &num_logprobs_, &logprobs_mode_, &mask_rows_, &bitmask_,
                  &penalty_tokens_, &penalty_counts_, &bias_tokens_})
    v->clear();
  rng_.clear();
  penalty_offsets_.assign(1, 0);
  bias_offsets_.assign(1, 0);
  top_n_ = 0;
}

int SamplingBatch::add(const SampleInput& in) {
  const sched::SamplingParams& p = *in.params;
  static const std::vector<int32_t> kEmpty;
  const std::vector<int32_t>& prompt = in.prompt_token_ids ? *in.prompt_token_ids : kEmpty;
  const std::vector<int32_t>& output = in.output_token_ids ? *in.output_token_ids : kEmpty;
  const int row = rows();
  temperature_.push_back(p.temperature);
  top_k_.push_back(p.top_k);
  top_p_.push_back(p.top_p);
  min_p_.push_back(p.min_p);
  repetition_.push_back(p.repetition_penalty);
  frequency_.push_back(p.frequency_penalty);
  presence_.push_back(p.presence_penalty);
  rng_.push_back(static_cast<int64_t>(in.rng != nullptr ? in.rng->seed : 0));
  rng_.push_back(static_cast<int64_t>(in.rng != nullptr ? in.rng->offset : 0));
  num_logprobs_.push_back(p.logprobs);
  logprobs_mode_.push_back(mode_of(p.logprobs_mode));
  top_n_ = std::max(top_n_, std::min(p.logprobs, vocab_));

  // Penalty tokens: prompt and output, each once, with its output count.
  const bool penalized =
      p.repetition_penalty != 1.0f || p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f;
  if (penalized) {
    for (const auto* ids : {&prompt, &output})
      for (int32_t t : *ids)
        FASTLM_CHECK_ARG(in_vocab(t, vocab_), "sampler: token id ", t,
                         " outside the vocabulary of ", vocab_);
    const size_t first = penalty_tokens_.size();
    for (int32_t t : output) ++count_of_[t];
    for (const auto* ids : {&prompt, &output}) {
      for (int32_t t : *ids) {
        if (listed_[t]) continue;
        listed_[t] = 1;
        penalty_tokens_.push_back(t);
        penalty_counts_.push_back(count_of_[t]);
      }
    }
    for (size_t j = first; j < penalty_tokens_.size(); ++j) {
      listed_[penalty_tokens_[j]] = 0;
      count_of_[penalty_tokens_[j]] = 0;
    }
  }
  penalty_offsets_.push_back(static_cast<int32_t>(penalty_tokens_.size()));

  for (const auto& [t, bias] : p.logit_bias) {
    bias_tokens_.push_back(t);
    bias_values_.push_back(bias);
  }
  bias_offsets_.push_back(static_cast<int32_t>(bias_tokens_.size()));

  // Every mask of the row folded into one allowed-token bitmask.
  bitmask_.resize(bitmask_.size() + words_);
  auto* words = reinterpret_cast<uint32_t*>(bitmask_.data() + static_cast<size_t>(row) * words_);
  bool masked = false;
  auto ban = [&](int32_t t) {
    words[t >> 5] &= ~(1u << (t & 31));
    masked = true;
  };
  if (p.allowed_token_ids.empty()) {
    std::fill(words, words + words_, ~0u);
  } else {
    std::fill(words, words + words_, 0u);
    for (int32_t t : p.allowed_token_ids) words[t >> 5] |= 1u << (t & 31);
    masked = true;
  }
  if (in.token_bitmask != nullptr) {
    const auto* g = reinterpret_cast<const uint32_t*>(in.token_bitmask);
    for (int w = 0; w < words_; ++w) words[w] &= g[w];
    masked = true;
  }
  // A bad word is banned once the output ends with all but its last token.
  for (const auto& word : p.bad_words) {
    const size_t prefix = word.size() - 1;
    if (prefix > output.size()) continue;
    if (std::equal(word.begin(), word.begin() + prefix, output.end() - prefix)) ban(word.back());
  }
  if (output.empty())
    for (int32_t t : p.begin_suppress_tokens) ban(t);
  if (static_cast<int>(output.size()) < p.min_tokens) {
    for (int32_t t : p.stop_token_ids)
      if (in_vocab(t, vocab_)) ban(t);
    if (!p.ignore_eos && eos_ids_ != nullptr)  // with ignore_eos, EOS does not stop the request
      for (int32_t t : *eos_ids_) ban(t);
  }
  mask_rows_.push_back(masked ? 1 : 0);
  if (p.timestamp_begin >= 0)
    timestamp_rows_.push_back({row, in.output_token_ids ? in.output_token_ids : &kEmpty,
                               p.timestamp_begin, p.max_initial_timestamp_index});
  return row;
}

void SamplingBatch::apply_logit_rules(float* logits) {
  const int32_t eot = eos_ids_ == nullptr || eos_ids_->empty() ? -1 : eos_ids_->front();
  for (const TimestampRow& t : timestamp_rows_) {
    float* row = logits + static_cast<int64_t>(t.row) * vocab_;
    const auto* words =
        reinterpret_cast<const uint32_t*>(bitmask_.data() + static_cast<size_t>(t.row) * words_);
    if (mask_rows_[t.row] != 0)
      for (int i = 0; i < vocab_; ++i)
        if (((words[i >> 5] >> (i & 31)) & 1u) == 0)
          row[i] = -std::numeric_limits<float>::infinity();
    model::apply_whisper_timestamp_rules(row, vocab_, *t.output, t.timestamp_begin, eot,
                                         t.max_initial_index);
  }
}

void SamplingBatch::and_mask(int row, const int32_t* words) {
  int32_t* w = bitmask_.data() + static_cast<size_t>(row) * words_;
  for (int i = 0; i < words_; ++i) w[i] &= words[i];
  mask_rows_[row] = 1;
}

ops::SamplingTensors& SamplingBatch::tensors() {
  const int64_t r = rows();
  const auto np = static_cast<int64_t>(penalty_tokens_.size());
  const auto nb = static_cast<int64_t>(bias_tokens_.size());
  ops::SamplingTensors& t = tensors_;
  // Every array of the step goes into one staging block (64-byte aligned parts), so a device
  // backend uploads the sampling metadata with one host-to-device copy.
  struct Part {
    const void* src;
    size_t bytes;
    DType dtype;
    std::vector<int64_t> shape;
    Tensor* dst;
  };
  auto part = [](const auto& v, DType dtype, std::vector<int64_t> shape, Tensor& dst) {
    return Part{v.data(), v.size() * sizeof(v[0]), dtype, std::move(shape), &dst};
  };
  const Part parts[] = {
      part(temperature_, DType::kF32, {r}, t.temperature),
      part(top_k_, DType::kI32, {r}, t.top_k),
      part(top_p_, DType::kF32, {r}, t.top_p),
      part(min_p_, DType::kF32, {r}, t.min_p),
      part(repetition_, DType::kF32, {r}, t.repetition_penalty),
      part(frequency_, DType::kF32, {r}, t.frequency_penalty),
      part(presence_, DType::kF32, {r}, t.presence_penalty),
      part(rng_, DType::kI64, {r, 2}, t.rng),
      part(num_logprobs_, DType::kI32, {r}, t.num_logprobs),
      part(logprobs_mode_, DType::kI32, {r}, t.logprobs_mode),
      part(mask_rows_, DType::kI32, {r}, t.mask_rows),
      part(bitmask_, DType::kI32, {r, words_}, t.bitmask),
      part(penalty_offsets_, DType::kI32, {r + 1}, t.penalty_offsets),
      part(penalty_tokens_, DType::kI32, {np}, t.penalty_tokens),
      part(penalty_counts_, DType::kI32, {np}, t.penalty_counts),
      part(bias_offsets_, DType::kI32, {r + 1}, t.bias_offsets),
      part(bias_tokens_, DType::kI32, {nb}, t.bias_tokens),
      part(bias_values_, DType::kF32, {nb}, t.bias_values),
  };
  auto padded = [](size_t bytes) { return (bytes + 63) / 64 * 64; };
  size_t total = 0;
  for (const Part& p : parts) total += padded(p.bytes);
  staging_.resize(total / sizeof(uint64_t));
  auto* base = reinterpret_cast<std::byte*>(staging_.data());
  size_t offset = 0;
  for (const Part& p : parts) {
    if (p.bytes > 0) std::memcpy(base + offset, p.src, p.bytes);
    *p.dst = Tensor::view(base + offset, p.shape, p.dtype);
    offset += padded(p.bytes);
  }
  staged_ = true;
  return t;
}

ops::SampleOutputs& SamplingBatch::outputs() {
  const int64_t r = rows();
  tokens_.assign(r, 0);
  logprob_.assign(r, 0.0f);
  rank_.assign(r, 0);
  top_tokens_.assign(r * top_n_, -1);
  top_logprobs_.assign(r * top_n_, 0.0f);
  ops::SampleOutputs& o = outputs_;
  o.tokens = host_tensor(tokens_, DType::kI32, {r});
  o.logprob = host_tensor(logprob_, DType::kF32, {r});
  o.rank = host_tensor(rank_, DType::kI32, {r});
  o.top_tokens = host_tensor(top_tokens_, DType::kI32, {r, top_n_});
  o.top_logprobs = host_tensor(top_logprobs_, DType::kF32, {r, top_n_});
  return o;
}

RandomState SamplingBatch::rng(int row) const {
  // ops::sample advances the staged copy; before tensors() the rows' own state is current.
  const int64_t* state = staged_ ? tensors_.rng.data<int64_t>() : rng_.data();
  return RandomState{static_cast<uint64_t>(state[2 * row]),
                     static_cast<uint64_t>(state[2 * row + 1])};
}

std::optional<TokenLogprobs> SamplingBatch::logprobs(int row) const {
  const int n = num_logprobs_[row];
  if (n < 0) return std::nullopt;
  TokenLogprobs lp;
  lp.token = tokens_[row];
  lp.logprob = logprob_[row];
  lp.rank = rank_[row];
  const int k = std::min(n, vocab_);
  lp.top.reserve(k);
  for (int j = 0; j < k; ++j) {
    const size_t at = static_cast<size_t>(row) * top_n_ + j;
    lp.top.emplace_back(top_tokens_[at], top_logprobs_[at]);
  }
  return lp;
}

uint64_t RandomState::next_u64() { return cpu::rng_draw(seed, offset++); }

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
  return RandomState{cpu::mix64(cpu::mix64(seed_) ^ (n + 1) * kGolden), 0};
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

void Sampler::check_inputs(const std::vector<SampleInput>& inputs) const {
  std::unordered_set<const RandomState*> rngs;
  for (const SampleInput& in : inputs) {
    FASTLM_CHECK_ARG(in.params != nullptr, "sampler: input without sched::SamplingParams");
    validate(*in.params);
    if (in.params->temperature >= cpu::kGreedyTemperature) {
      FASTLM_CHECK_ARG(in.rng != nullptr, "sampler: random sampling needs a RandomState");
      FASTLM_CHECK_ARG(rngs.insert(in.rng).second, "sampler: two rows share one RandomState");
    }
  }
}

std::vector<SampleResult> Sampler::sample(float* logits, int rows,
                                          const std::vector<SampleInput>& inputs) {
  FASTLM_CHECK_ARG(rows >= 0 && static_cast<size_t>(rows) == inputs.size(), "sampler: ", rows,
                   " logits rows for ", inputs.size(), " inputs");
  check_inputs(inputs);
  batch_.begin(vocab_size_, &eos_token_ids_);
  for (const SampleInput& in : inputs) batch_.add(in);
  batch_.apply_logit_rules(logits);
  Tensor view = Tensor::view(logits, {rows, vocab_size_}, DType::kF32);
  ops::sample(ops::default_context(Device::kCPU), view, batch_.tensors(), batch_.outputs());
  std::vector<SampleResult> results(rows);
  for (int i = 0; i < rows; ++i) {
    if (inputs[i].rng != nullptr) *inputs[i].rng = batch_.rng(i);
    results[i].token = batch_.token(i);
    results[i].logprobs = batch_.logprobs(i);
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
  const int n = std::min(top_n, vocab);
  std::vector<float> logprob(rows), top_logprobs(static_cast<size_t>(rows) * n);
  std::vector<int32_t> rank(rows), top_tokens(static_cast<size_t>(rows) * n);
  ops::SampleOutputs out;
  out.logprob = host_tensor(logprob, DType::kF32, {rows});
  out.rank = host_tensor(rank, DType::kI32, {rows});
  out.top_tokens = host_tensor(top_tokens, DType::kI32, {rows, n});
  out.top_logprobs = host_tensor(top_logprobs, DType::kF32, {rows, n});
  const Tensor view = Tensor::view(const_cast<float*>(logits), {rows, vocab}, DType::kF32);
  const Tensor t = Tensor::view(const_cast<int32_t*>(targets), {rows}, DType::kI32);
  ops::score(ops::default_context(Device::kCPU), view, t, out);
  std::vector<TokenLogprobs> result(rows);
  for (int i = 0; i < rows; ++i) {
    TokenLogprobs& lp = result[i];
    lp.token = targets[i];
    lp.logprob = logprob[i];
    lp.rank = rank[i];
    lp.top.reserve(n);
    for (int j = 0; j < n; ++j)
      lp.top.emplace_back(top_tokens[static_cast<size_t>(i) * n + j],
                          top_logprobs[static_cast<size_t>(i) * n + j]);
  }
  return result;
}

}  // namespace fastlm::engine
