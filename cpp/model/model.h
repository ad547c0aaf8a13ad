#pragma once
// The model interface the runner drives: one forward pass over a flat batch of tokens from
// many sequences, reading and writing the paged KV cache.
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "kv/kv_storage.h"
#include "model/config.h"
#include "model/weights.h"

namespace fastlm::model {

struct ForwardBatch {
  std::vector<int32_t> token_ids;        // [T]
  std::vector<int32_t> positions;        // [T]
  std::vector<int64_t> slot_mapping;     // [T] KV slot for each token
  std::vector<int32_t> query_start_loc;  // [num_seqs + 1]
  std::vector<int32_t> seq_lens;         // [num_seqs] context length after this step
  std::vector<int32_t> block_tables;     // [num_seqs * max_blocks_per_seq], padded with 0
  int max_blocks_per_seq = 0;
  std::vector<int32_t> logits_indices;   // rows of the flat batch whose logits are wanted
  int num_seqs() const { return static_cast<int>(seq_lens.size()); }
  int num_tokens() const { return static_cast<int>(token_ids.size()); }
};

class Model {
 public:
  virtual ~Model() = default;
  virtual const ModelConfig& config() const = 0;
  // Computes logits [logits_indices.size(), vocab_size] float32.
  virtual Tensor forward(const ForwardBatch& batch, kv::KvStorage& kv) = 0;
  // Bytes held by weights (mmapped or owned).
  virtual size_t weight_bytes() const = 0;
  // The dtype weights are computed in (float32 or bfloat16) and KV is stored in.
  virtual DType compute_dtype() const = 0;
};

struct LoadOptions {
  std::string dtype = "auto";  // auto | float32 | bfloat16 | float16
};

// Loads a HF folder (config.json + safetensors) or a .gguf file.
std::unique_ptr<Model> load_model(const std::string& path, const LoadOptions& options);

}  // namespace fastlm::model
