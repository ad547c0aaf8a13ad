#pragma once
// The model interface the runner drives: one forward pass over a flat batch of tokens from
// many sequences, reading and writing the paged KV cache.
#include <memory>
#include <string>
#include <vector>

#include "core/exec_context.h"
#include "core/status.h"
#include "core/tensor.h"
#include "model/config.h"
#include "model/kv_storage.h"
#include "model/weights.h"
#include "ops/backend.h"

namespace fastlm::model {

struct ForwardBatch {
  std::vector<int32_t> token_ids;        // [T]
  std::vector<int32_t> positions;        // [T]
  std::vector<int64_t> slot_mapping;     // [T] KV slot for each token
  std::vector<int32_t> query_start_loc;  // [num_seqs + 1]
  std::vector<int32_t> seq_lens;         // [num_seqs] context length after this step
  std::vector<int32_t> block_tables;     // [num_seqs * max_blocks_per_seq], padded with 0
  int max_blocks_per_seq = 0;
  std::vector<int32_t> logits_indices;  // rows of the flat batch whose logits are wanted
  std::vector<int32_t> token_type_ids;  // [T] segment ids (encoders); empty = all 0
  int num_seqs() const { return static_cast<int>(seq_lens.size()); }
  int num_tokens() const { return static_cast<int>(token_ids.size()); }
};

class Model {
 public:
  virtual ~Model() = default;
  virtual const ModelConfig& config() const = 0;
  // Computes logits [logits_indices.size(), vocab_size] float32.
  virtual Tensor forward(const ForwardBatch& batch, model::KvStorage& kv) = 0;
  // Bytes held by weights (mmapped or owned).
  virtual size_t weight_bytes() const = 0;
  // The dtype weights are computed in (float32 or bfloat16) and KV is stored in.
  virtual DType compute_dtype() const = 0;

  // Pooling models (embeddings, classifiers) serve prefill-only requests: the engine calls
  // forward_hidden instead of forward and pools the rows itself.
  virtual bool is_pooling() const { return false; }
  // Hidden states [T, hidden_size] float32 of every token of the batch (decoders: after the
  // final norm).
  virtual Tensor forward_hidden(const ForwardBatch& batch, model::KvStorage& kv) {
    throw Error(config().architecture + " does not compute hidden states for pooling");
  }
  // The classification / score head on pooled rows [n, hidden_size] -> raw logits
  // [n, num_labels()]. Models without a head have num_labels() == 0 and throw.
  virtual int num_labels() const { return 0; }
  virtual Tensor classify(const Tensor& pooled) {
    throw Error(config().architecture + " has no classification head");
  }
  // False for encoders, which attend within the current batch and never read the KV cache:
  // the engine then allocates no KV memory (blocks stay bookkeeping only).
  virtual bool uses_kv_cache() const { return true; }

  // The context every op of this model runs in (its device, stream, workspace, backend).
  ExecContext& ctx() const { return *ctx_; }

  // Decisions made while loading that the start-up output reports (e.g. float16 -> float32).
  const std::vector<std::string>& load_notes() const { return load_notes_; }
  void add_load_note(std::string note) { load_notes_.push_back(std::move(note)); }

 private:
  ExecContext* ctx_ = &ops::default_context(Device::kCPU);
  std::vector<std::string> load_notes_;
};

struct LoadOptions {
  std::string dtype = "auto";  // auto | float32 | bfloat16 | float16
  // auto | generate | pooling. "pooling" serves a decoder checkpoint (with or without lm_head)
  // as a last-token embedder; encoders and *ForSequenceClassification are always pooling.
  std::string runner = "auto";
  Device device = Device::kCPU;  // its backend resolves dtype=auto
};

// Loads a HF folder (config.json + safetensors) or a .gguf file.
std::unique_ptr<Model> load_model(const std::string& path, const LoadOptions& options);

}  // namespace fastlm::model
