#pragma once
// The model interface the runner drives: one forward pass over a flat batch of tokens from
// many sequences, reading and writing the paged KV cache.
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "core/exec_context.h"
#include "core/qtype.h"
#include "core/status.h"
#include "core/tensor.h"
#include "model/config.h"
#include "model/kv_storage.h"
#include "model/weights.h"
#include "ops/backend.h"

namespace fastlm::model {

// A view of one index array of a batch, inside the builder's staging area (host memory; the
// builder keeps it alive until its next begin()). Reads like a const std::vector.
template <typename T>
class IndexSpan {
 public:
  IndexSpan() = default;
  IndexSpan(T* data, size_t size) : data_(data), size_(size) {}
  T* data() const { return data_; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  T& operator[](size_t i) const { return data_[i]; }
  T& front() const { return data_[0]; }
  T& back() const { return data_[size_ - 1]; }
  T* begin() const { return data_; }
  T* end() const { return data_ + size_; }
  std::vector<std::remove_const_t<T>> to_vector() const { return {begin(), end()}; }

 private:
  T* data_ = nullptr;
  size_t size_ = 0;
};

// 1-D / 2-D host tensor views of a batch's index arrays (no copy), beside core's overloads.
using ::fastlm::host_view;
inline Tensor host_view(IndexSpan<int32_t> v) {
  return Tensor::view(v.data(), {static_cast<int64_t>(v.size())}, DType::kI32);
}
inline Tensor host_view(IndexSpan<int64_t> v) {
  return Tensor::view(v.data(), {static_cast<int64_t>(v.size())}, DType::kI64);
}
inline Tensor host_view(IndexSpan<int32_t> v, int64_t rows, int64_t cols) {
  FASTLM_CHECK(static_cast<int64_t>(v.size()) == rows * cols, "host_view: ", v.size(),
               " entries are not ", rows, " x ", cols);
  return Tensor::view(v.data(), {rows, cols}, DType::kI32);
}

// One step's flat batch. Built only by BatchBuilder (model/batch_builder.h): its index arrays
// are views into the builder's one staging area (`staging`), so a device backend uploads a
// step's indices with one host-to-device copy of staging's first `staging_bytes` bytes.
struct ForwardBatch {
  IndexSpan<int32_t> token_ids;        // [T]
  IndexSpan<int32_t> positions;        // [T]
  IndexSpan<int64_t> slot_mapping;     // [T] KV slot for each token
  IndexSpan<int32_t> query_start_loc;  // [num_seqs + 1]
  IndexSpan<int32_t> seq_lens;         // [num_seqs] context length after this step
  // [num_seqs * max_blocks_per_seq]: row s holds sequence s's blocks (entries past its context
  // are unspecified); persistent rows, appended to in place across steps.
  IndexSpan<int32_t> block_tables;
  int max_blocks_per_seq = 0;
  IndexSpan<int32_t> logits_indices;  // rows of the flat batch whose logits are wanted
  IndexSpan<int32_t> token_type_ids;  // [T] segment ids (encoders); empty = all 0
  // Encoder-decoder models (Whisper): KV slots [0, num_encoder_slots) of every sequence hold
  // its cross-attention K/V, its decoder tokens follow at positions >= num_encoder_slots.
  // encoder_inputs[s] is sequence s's encoder input (shape Model::encoder_input_shape(), float32)
  // in the step that runs its encoder, else nullptr.
  int num_encoder_slots = 0;
  std::vector<const float*> encoder_inputs;
  Tensor staging;  // the host allocation every span above points into
  size_t staging_bytes = 0;
  int num_seqs() const { return static_cast<int>(seq_lens.size()); }
  int num_tokens() const { return static_cast<int>(token_ids.size()); }
};

class Model {
 public:
  virtual ~Model() = default;
  virtual const ModelConfig& config() const = 0;
  // Computes logits [logits_indices.size(), vocab_size] float32.
  virtual Tensor forward(const ForwardBatch& batch, model::KvStorage& kv) = 0;
  // Plans memory once at start-up: activation scratch for max_num_tokens tokens per step, the
  // RoPE table to max_model_len. A planned forward never allocates scratch or grows tables.
  virtual void plan(int64_t max_num_tokens, int64_t max_model_len) {}
  // Bytes held by weights (mmapped or owned).
  virtual size_t weight_bytes() const = 0;
  // Of those, bytes used in place from a file mapping (page cache, shared, not resident until
  // touched); the rest is owned memory.
  virtual size_t mapped_weight_bytes() const { return 0; }
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
  // Encoder-decoder models: the encoder output length (cross-attention keys per request) and
  // the shape of one request's encoder input; 0 and {} for other models.
  virtual int encoder_len() const { return 0; }
  virtual std::vector<int64_t> encoder_input_shape() const { return {}; }

  // The context every op of this model runs in (its device, stream, workspace, backend).
  ExecContext& ctx() const { return *ctx_; }

  // Decisions made while loading that the start-up output reports (e.g. float16 -> float32).
  const std::vector<std::string>& load_notes() const { return load_notes_; }
  void add_load_note(std::string note) { load_notes_.push_back(std::move(note)); }

 private:
  ExecContext* ctx_ = &ops::default_context(Device::kCPU);
  std::vector<std::string> load_notes_;
};

// How a decoder keeps its weight matrices (LoadOptions::quantization).
struct MatrixFormat {
  // GGUF blocks stay packed where a quantized kernel runs them (else: dequantized at load).
  bool keep_packed = true;
  // Float matrices are quantized at load to this format (embeddings and lm_head to Q8_0).
  std::optional<QType> quantize;
};

struct LoadOptions {
  std::string dtype = "auto";  // auto | float32 | bfloat16 | float16
  // vLLM's --quantization: "" (GGUF weights stay packed, float checkpoints stay float), "gguf"
  // (the same, for a GGUF file), "none" (GGUF weights dequantized at load: the bf16 path),
  // "q8_0" / "q4_0" (float weights quantized at load).
  std::string quantization;
  // auto | generate | pooling. "pooling" serves a decoder checkpoint (with or without lm_head)
  // as a last-token embedder; encoders and *ForSequenceClassification are always pooling.
  std::string runner = "auto";
  Device device = Device::kCPU;  // its backend resolves dtype=auto
};

// Loads a HF folder (config.json + safetensors) or a .gguf file.
std::unique_ptr<Model> load_model(const std::string& path, const LoadOptions& options);

}  // namespace fastlm::model
