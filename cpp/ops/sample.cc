// Sampling ops: the entry checks are O(1) (shapes, dtypes, devices); the host builder of the
// metadata validated its contents once per step.
#include "ops/sample.h"

#include "cpu/sample_cpu.h"
#include "ops/dispatch.h"
#include "ops/op_checks.h"

namespace fastlm::ops {

namespace {

// out's logprob / rank / top tensors for `rows` rows; returns top_n.
int64_t check_logprob_outputs(const char* op, const SampleOutputs& out, int64_t rows) {
  using namespace detail;
  check_shape(op, "logprob", out.logprob, DType::kF32, {rows});
  check_shape(op, "rank", out.rank, DType::kI32, {rows});
  check_shape(op, "top_tokens", out.top_tokens, DType::kI32, {rows, -1});
  const int64_t top_n = out.top_tokens.size(1);
  check_shape(op, "top_logprobs", out.top_logprobs, DType::kF32, {rows, top_n});
  return top_n;
}

}  // namespace

void sample(ExecContext& ctx, Tensor& logits, const SamplingTensors& m, SampleOutputs& out) {
  using namespace detail;
  const char* op = "sample";
  check_tensor(op, "logits", logits, 2, DType::kF32);
  const int64_t r = logits.size(0), v = logits.size(1);
  for (const auto& [name, t] :
       {std::pair<const char*, const Tensor*>{"temperature", &m.temperature},
        {"top_p", &m.top_p},
        {"min_p", &m.min_p},
        {"repetition_penalty", &m.repetition_penalty},
        {"frequency_penalty", &m.frequency_penalty},
        {"presence_penalty", &m.presence_penalty}})
    check_shape(op, name, *t, DType::kF32, {r});
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"top_k", &m.top_k},
                                {"num_logprobs", &m.num_logprobs},
                                {"logprobs_mode", &m.logprobs_mode},
                                {"mask_rows", &m.mask_rows},
                                {"tokens", &out.tokens}})
    check_shape(op, name, *t, DType::kI32, {r});
  check_shape(op, "rng", m.rng, DType::kI64, {r, 2});
  const int64_t words = (v + 31) / 32;
  check_shape(op, "bitmask", m.bitmask, DType::kI32, {r, words});
  check_shape(op, "penalty_offsets", m.penalty_offsets, DType::kI32, {r + 1});
  check_shape(op, "penalty_tokens", m.penalty_tokens, DType::kI32, {-1});
  check_shape(op, "penalty_counts", m.penalty_counts, DType::kI32, {m.penalty_tokens.size(0)});
  check_shape(op, "bias_offsets", m.bias_offsets, DType::kI32, {r + 1});
  check_shape(op, "bias_tokens", m.bias_tokens, DType::kI32, {-1});
  check_shape(op, "bias_values", m.bias_values, DType::kF32, {m.bias_tokens.size(0)});
  const int64_t top_n = check_logprob_outputs(op, out, r);
  check_device(ctx, op,
               {&logits,
                &m.temperature,
                &m.top_k,
                &m.top_p,
                &m.min_p,
                &m.repetition_penalty,
                &m.frequency_penalty,
                &m.presence_penalty,
                &m.rng,
                &m.num_logprobs,
                &m.logprobs_mode,
                &m.mask_rows,
                &m.bitmask,
                &m.penalty_offsets,
                &m.penalty_tokens,
                &m.penalty_counts,
                &m.bias_offsets,
                &m.bias_tokens,
                &m.bias_values,
                &out.tokens,
                &out.logprob,
                &out.rank,
                &out.top_tokens,
                &out.top_logprobs});
  dispatch(ctx, op, [&](auto device) {
    if constexpr (is_cpu<decltype(device)>) {
      cpu::SampleArgs a;
      a.logits = logits.data<float>();
      a.rows = r;
      a.vocab = v;
      a.temperature = m.temperature.data<float>();
      a.top_k = m.top_k.data<int32_t>();
      a.top_p = m.top_p.data<float>();
      a.min_p = m.min_p.data<float>();
      a.repetition_penalty = m.repetition_penalty.data<float>();
      a.frequency_penalty = m.frequency_penalty.data<float>();
      a.presence_penalty = m.presence_penalty.data<float>();
      a.rng = m.rng.data<int64_t>();
      a.num_logprobs = m.num_logprobs.data<int32_t>();
      a.logprobs_mode = m.logprobs_mode.data<int32_t>();
      a.mask_rows = m.mask_rows.data<int32_t>();
      a.bitmask = m.bitmask.data<int32_t>();
      a.mask_words = words;
      a.penalty_offsets = m.penalty_offsets.data<int32_t>();
      a.penalty_tokens = m.penalty_tokens.data<int32_t>();
      a.penalty_counts = m.penalty_counts.data<int32_t>();
      a.bias_offsets = m.bias_offsets.data<int32_t>();
      a.bias_tokens = m.bias_tokens.data<int32_t>();
      a.bias_values = m.bias_values.data<float>();
      a.tokens = out.tokens.data<int32_t>();
      a.logprob = out.logprob.data<float>();
      a.rank = out.rank.data<int32_t>();
      a.top_tokens = out.top_tokens.data<int32_t>();
      a.top_logprobs = out.top_logprobs.data<float>();
      a.top_n = top_n;
      cpu::sample(a);
    } else {
      no_kernel(device, op);
    }
  });
}

void score(ExecContext& ctx, const Tensor& logits, const Tensor& targets, SampleOutputs& out) {
  using namespace detail;
  const char* op = "score";
  check_tensor(op, "logits", logits, 2, DType::kF32);
  const int64_t r = logits.size(0);
  check_shape(op, "targets", targets, DType::kI32, {r});
  const int64_t top_n = check_logprob_outputs(op, out, r);
  check_device(ctx, op,
               {&logits, &targets, &out.logprob, &out.rank, &out.top_tokens, &out.top_logprobs});
  dispatch(ctx, op, [&](auto device) {
    if constexpr (is_cpu<decltype(device)>) {
      cpu::score(logits.data<float>(), r, logits.size(1), targets.data<int32_t>(), top_n,
                 out.logprob.data<float>(), out.rank.data<int32_t>(),
                 out.top_tokens.data<int32_t>(), out.top_logprobs.data<float>());
    } else {
      no_kernel(device, op);
    }
  });
}

}  // namespace fastlm::ops
