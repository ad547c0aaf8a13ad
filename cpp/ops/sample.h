#pragma once
// Sampling as an op: the logits of the sampling rows stay on the device that computed them; the
// batched sampling metadata (built on the host once per step by engine::SamplingBatch and
// uploaded with the step) goes in, and only the sampled ids and the requested logprobs come out.
// CPU body: cpu/sample_cpu.*. A device body plugs into the dispatch branch of ops/sample.cc.
#include "core/exec_context.h"
#include "core/tensor.h"

namespace fastlm::ops {

// Per-row sampling metadata of R rows over a vocabulary of V. [R] tensors unless noted.
// Deep validation (ranges, token ids inside the vocabulary, CSR offsets) is done by the host
// builder; the op checks shapes, dtypes and devices only.
struct SamplingTensors {
  Tensor temperature;         // f32; < 1e-5 = greedy (the row's generator is not advanced)
  Tensor top_k;               // i32; <= 0 = off
  Tensor top_p;               // f32 in (0, 1]
  Tensor min_p;               // f32 in [0, 1]
  Tensor repetition_penalty;  // f32; 1 = off
  Tensor frequency_penalty;   // f32; 0 = off
  Tensor presence_penalty;    // f32; 0 = off
  Tensor rng;                 // i64 [R, 2]: (seed, offset); random rows advance offset by one
  Tensor num_logprobs;        // i32; -1 = none, N >= 0 = the sampled token's + top N
  Tensor logprobs_mode;       // i32: cpu::SampleLogprobsMode (sched::LogprobsMode)
  // Allowed tokens: where mask_rows[r] != 0, token i of row r survives iff bit (i % 32) of
  // bitmask[r][i / 32] is set (grammar, allowed_token_ids, bad words, min_tokens bans folded in).
  Tensor mask_rows;  // i32
  Tensor bitmask;    // i32 [R, ceil(V / 32)]
  // Penalty tokens, CSR: row r's distinct prompt-or-output tokens are
  // penalty_tokens[penalty_offsets[r] .. penalty_offsets[r + 1]), with their output counts
  // (0 = prompt only) in penalty_counts.
  Tensor penalty_offsets;  // i32 [R + 1]
  Tensor penalty_tokens;   // i32 [N]
  Tensor penalty_counts;   // i32 [N]
  // logit_bias, CSR likewise: bias_values[j] is added to token bias_tokens[j].
  Tensor bias_offsets;  // i32 [R + 1]
  Tensor bias_tokens;   // i32 [M]
  Tensor bias_values;   // f32 [M]
};

// What leaves the op. Rows with num_logprobs < 0 leave logprob/rank/top untouched; rows asking
// for n < top_n fill columns n.. with token -1 and logprob -inf.
struct SampleOutputs {
  Tensor tokens;        // i32 [R]
  Tensor logprob;       // f32 [R]: the sampled token's (raw or processed, per logprobs_mode)
  Tensor rank;          // i32 [R]: 1-based rank of the sampled token
  Tensor top_tokens;    // i32 [R, top_n]
  Tensor top_logprobs;  // f32 [R, top_n]
};

// logits [R, V] float32: overwritten with the processed logits (masked tokens -inf).
void sample(ExecContext& ctx, Tensor& logits, const SamplingTensors& meta, SampleOutputs& out);

// Prompt logprobs: row r scores targets[r] under log_softmax(logits row r) into out (logprob,
// rank, and the top_n = out.top_tokens.size(1) best tokens). out.tokens is not used.
void score(ExecContext& ctx, const Tensor& logits, const Tensor& targets, SampleOutputs& out);

}  // namespace fastlm::ops
