#pragma once
// Per-request pooling parameters (embeddings, classification, scores): how the engine turns a
// prefill-only request's hidden states into its output vector. Python picks them from the
// model's sentence-transformers files and config.json and the request's task.
#include <cstdint>

namespace fastlm::sched {

enum class PoolingType : uint8_t {
  kCls,   // the first token's hidden state
  kMean,  // the mean over all tokens
  kLast,  // the last token's (decoders)
  kAll,   // every token's: a [num_tokens, hidden] output
};

enum class PoolingActivation : uint8_t {
  kNone,
  kSoftmax,  // single-label classification
  kSigmoid,  // multi-label classification, cross-encoder scores (num_labels = 1)
};

struct PoolingParams {
  PoolingType type = PoolingType::kCls;
  // Apply the model's classification / score head to the pooled vector (not with kAll).
  bool use_head = false;
  // L2-normalize each output row (after the head, when there is one).
  bool normalize = false;
  PoolingActivation activation = PoolingActivation::kNone;
  // Cross-encoder pairs: tokens [token_type_boundary, end) get token type 1, the rest 0.
  // -1 = all type 0.
  int token_type_boundary = -1;
};

}  // namespace fastlm::sched
