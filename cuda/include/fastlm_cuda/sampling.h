#pragma once
// Sampling on the GPU over float32 logits [batch, vocab], in vLLM v1's order: penalties and logit
// bias and token masks on the raw logits (apply_* below, each optional), then sample(): greedy
// (temperature <= 0), else temperature, min-p, top-k, top-p and a draw from the kept tokens with
// a per-request Philox stream. Only ids (and the requested logprobs) leave the device.
// Per-row parameters are device arrays of length batch; null means "off" for every row.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "fastlm_cuda/status.h"

namespace fastlm::cuda {

// Repetition (HF: logit / p if positive else logit * p, over prompt and output tokens), then
// frequency (- f * count) and presence (- p if count > 0) over output tokens. The tokens a row
// has seen come as CSR: row r's unique tokens are token_ids[offsets[r] .. offsets[r + 1]), each
// with its count in the output so far and whether it occurs in the prompt.
struct PenaltyArgs {
  const float* repetition = nullptr;  // [batch], 1 = off
  const float* frequency = nullptr;   // [batch], 0 = off
  const float* presence = nullptr;    // [batch], 0 = off
  const int32_t* offsets = nullptr;   // [batch + 1]
  const int32_t* token_ids = nullptr;
  const int32_t* output_counts = nullptr;
  const uint8_t* in_prompt = nullptr;
};
Status apply_penalties(float* logits, int batch, int vocab, const PenaltyArgs& args,
                       cudaStream_t stream);

// logits[r, token_ids[i]] += values[i] for i in [offsets[r], offsets[r + 1]).
Status apply_logit_bias(float* logits, int batch, int vocab, const int32_t* offsets,
                        const int32_t* token_ids, const float* values, cudaStream_t stream);

// Tokens whose bit is 0 get -inf. bitmask: [num_masks, ceil(vocab / 32)] int32, bit v % 32 of
// word v / 32 (xgrammar / llguidance layout); row r uses mask mask_index[r] (-1: none). Used for
// the grammar mask each step and for allowed-token / bad-word masks.
Status apply_token_bitmask(float* logits, int batch, int vocab, const int32_t* bitmask,
                           const int32_t* mask_index, cudaStream_t stream);

struct SampleArgs {
  const float* logits = nullptr;  // [batch, vocab], not modified
  int batch = 0;
  int vocab = 0;
  const float* temperature = nullptr;  // <= 0 (or null): greedy, the lowest id among maxima
  const int32_t* top_k = nullptr;      // <= 0 or >= vocab: off
  const float* top_p = nullptr;        // >= 1: off
  const float* min_p = nullptr;        // <= 0: off
  const uint64_t* seeds = nullptr;     // Philox key per row
  const uint64_t* offsets = nullptr;   // Philox counter per row (e.g. tokens generated so far)
  int32_t* sampled = nullptr;          // [batch] out
};
Status sample(const SampleArgs& args, cudaStream_t stream);

// Logprobs from `logits` (raw or processed, as --logprobs-mode says): for each row the logprob
// and rank (1 = most likely) of token_ids[r], and the top_n most likely tokens (ids descending by
// logprob, ties by lower id) with their logprobs. top_n in [0, 20]; top outputs may be null when
// top_n is 0.
Status compute_logprobs(const float* logits, int batch, int vocab, const int32_t* token_ids,
                        int top_n, float* token_logprob, int32_t* token_rank, int32_t* top_ids,
                        float* top_logprobs, cudaStream_t stream);

// Philox4x32-10 uniform in [0, 1) for (seed, offset): what sample() draws for a row, exposed so
// tests can check the draw against a host implementation.
Status philox_uniform(const uint64_t* seeds, const uint64_t* offsets, int n, float* out,
                      cudaStream_t stream);

}  // namespace fastlm::cuda
