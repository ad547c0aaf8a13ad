#pragma once
// GGUF (v2/v3) reader. Layout: magic "GGUF", u32 version, u64 tensor_count, u64 kv_count,
// kv_count metadata pairs (string key, u32 type, value), tensor infos (name, u32 n_dims,
// u64 ne[n_dims], u32 ggml type, u64 offset), padding to general.alignment (default 32), data.
// ne[0] is the fastest-varying axis, so the row-major shape is ne reversed.
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/gguf_dequant.h"
#include "model/mmap_file.h"
#include "model/weights.h"

namespace fastlm::model {

enum class GgufValueType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};

// One metadata value. Arrays keep their elements: integers in array_ints, floats in
// array_floats, strings (the vocabulary, merges) in array_strings.
struct GgufValue {
  GgufValueType type = GgufValueType::kU32;
  int64_t i = 0;   // integer and bool types
  double f = 0.0;  // float types (integers also mirrored here)
  std::string s;
  GgufValueType array_type = GgufValueType::kU32;
  uint64_t array_len = 0;
  std::vector<int64_t> array_ints;
  std::vector<double> array_floats;
  std::vector<std::string> array_strings;
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> ne;  // as stored: ne[0] fastest
  GgmlType type = GgmlType::kF32;
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
  std::vector<int64_t> shape() const { return {ne.rbegin(), ne.rend()}; }
  int64_t numel() const;
};

class GgufFile {
 public:
  // Parses header, metadata and tensor infos; throws fastlm::Error on a malformed file.
  static std::shared_ptr<GgufFile> open(const std::string& path);

  uint32_t version() const { return version_; }
  const std::map<std::string, GgufValue>& metadata() const { return metadata_; }
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find(const std::string& gguf_name) const;

  bool has(const std::string& key) const { return metadata_.count(key) > 0; }
  int64_t get_int(const std::string& key, int64_t fallback) const;
  double get_float(const std::string& key, double fallback) const;
  std::string get_string(const std::string& key, const std::string& fallback) const;

  // The tensor as float32 in row-major (reversed ne) shape, no renaming or un-permuting.
  Tensor dequantized(const GgufTensorInfo& info) const;
  // A zero-copy view for float types (F32/F16/BF16), keeping the mapping alive.
  Tensor view(const GgufTensorInfo& info) const;
  // MappedFile::release of the file's bytes [p, p + n).
  bool release(const void* p, size_t n) const { return file_->release(p, n); }
  bool maps(const void* p, size_t n) const { return file_->maps(p, n); }
  // Keeps the file mapped while a view of it lives.
  std::shared_ptr<void> mapping() const { return std::static_pointer_cast<void>(file_); }

 private:
  std::shared_ptr<MappedFile> file_;
  uint32_t version_ = 0;
  std::map<std::string, GgufValue> metadata_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t> index_;
};

// "blk.3.attn_q.weight" -> "model.layers.3.self_attn.q_proj.weight"; empty when the tensor has
// no Hugging Face counterpart the decoder uses (e.g. rope_freqs).
std::string gguf_to_hf_name(const std::string& gguf_name);

// Hyper-parameters from llama/qwen2/qwen3 GGUF metadata.
ModelConfig gguf_model_config(const GgufFile& file);

// Serves Hugging Face names from a GGUF file: float tensors as mmapped views, quantized ones
// dequantized to float32 on each get() or packed (mmapped) by get_packed(), llama q/k projections
// un-permuted back to HF row order (llama.cpp's converter interleaves each head's rotary halves;
// transformers' reverse_permute_weights undoes it the same way).
class GgufSource : public WeightSource {
 public:
  GgufSource(std::shared_ptr<GgufFile> file, const ModelConfig& config);
  bool has(const std::string& name) const override;
  Tensor get(const std::string& name) const override;
  std::optional<Weight> get_packed(const std::string& name) const override;
  std::vector<std::string> names() const override;
  bool release(const void* data, size_t bytes) const override {
    return file_->release(data, bytes);
  }
  bool maps(const void* data, size_t bytes) const override { return file_->maps(data, bytes); }
  std::vector<std::string> format_notes(bool packed) const override;

 private:
  const GgufTensorInfo& info(const std::string& name) const;
  // Heads whose rows llama.cpp's converter interleaved (q/k of llama), or 0.
  int permuted_heads(const std::string& name) const;
  std::shared_ptr<GgufFile> file_;
  std::map<std::string, const GgufTensorInfo*> by_hf_name_;
  bool unpermute_qk_ = false;
  int num_heads_ = 0;
  int num_kv_heads_ = 0;
};

}  // namespace fastlm::model
