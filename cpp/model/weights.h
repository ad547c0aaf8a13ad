#pragma once
// Where a model's tensors come from. Names are Hugging Face names
// ("model.layers.0.self_attn.q_proj.weight"); GGUF readers translate theirs.
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/qtype.h"
#include "core/tensor.h"
#include "model/config.h"

namespace fastlm::model {

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual bool has(const std::string& name) const = 0;
  // The tensor as stored (mmapped view where possible). Throws fastlm::Error naming a missing
  // tensor.
  virtual Tensor get(const std::string& name) const = 0;
  // The tensor as packed quantized blocks when it is stored so (GGUF), else nullopt. A view of
  // the mapping where the stored rows are used as they are.
  virtual std::optional<Weight> get_packed(const std::string& name) const {
    (void)name;
    return std::nullopt;
  }
  virtual std::vector<std::string> names() const = 0;
  // The caller copied [data, data + bytes) of a tensor this source served and will not read it
  // again: a mapped source drops those pages from the process's resident set. True when the
  // range lies in one of its mappings (false for memory the source does not map).
  virtual bool release(const void* data, size_t bytes) const {
    (void)data;
    (void)bytes;
    return false;
  }
  // Whether [data, data + bytes) is a view of one of its mappings (not a copy it made, such as
  // GGUF's un-permuted q/k).
  virtual bool maps(const void* data, size_t bytes) const {
    (void)data;
    (void)bytes;
    return false;
  }
  // What a user should know about how the stored formats load (one line each): formats read
  // through another packed format, or dequantized for lack of kernels. `packed`: whether the
  // model keeps quantized matrices packed (else everything is dequantized anyway).
  virtual std::vector<std::string> format_notes(bool packed) const {
    (void)packed;
    return {};
  }
};

// A folder with model.safetensors or model.safetensors.index.json (+ shards). mmapped.
std::unique_ptr<WeightSource> open_safetensors(const std::string& folder);

// A GGUF file (llama architecture family). Quantized tensors are served packed (get_packed) or
// dequantized (get); q/k weights are un-permuted back to HF layout. `config` receives the model
// hyper-parameters.
std::unique_ptr<WeightSource> open_gguf(const std::string& path, ModelConfig* config);

}  // namespace fastlm::model
