#pragma once
// CTranslate2 model directories (faster-whisper's format): `model.bin` holds every variable,
// `config.json` and `tokenizer.json` / `vocabulary.*` sit beside it. model.bin layout, all
// little-endian:
//
//   u32 binary_version | string spec_name | u32 spec_revision | u32 num_variables
//   num_variables x { string name | u8 rank | u32 dim[rank] | u8 dtype | u32 num_bytes | data }
//   u32 num_aliases x { string alias | string variable }      (binary_version >= 3)
//
// where `string` is a u16 byte length (terminating NUL included) and the bytes, and dtype is
// 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16. Names are CTranslate2's spec names
// ("encoder/layer_0/self_attention/linear_0/weight"); float variables come back as views of the
// mmapped file, scalars (num_heads, activation, flags) through scalar().
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/mmap_file.h"
#include "model/weights.h"

namespace fastlm::model {

class Ctranslate2Source : public WeightSource {
 public:
  // Reads `folder`/model.bin. Throws fastlm::Error on a truncated or unsupported file
  // (binary_version outside [3, 6], quantized int8/int16 weights).
  explicit Ctranslate2Source(const std::string& folder);
  const std::string& spec_name() const { return spec_name_; }
  bool has(const std::string& name) const override;
  Tensor get(const std::string& name) const override;
  std::vector<std::string> names() const override;
  // An integer scalar variable (rank 0, int8/int16/int32); `fallback` when absent.
  int64_t scalar(const std::string& name, int64_t fallback) const;

 private:
  struct Entry {
    std::vector<int64_t> shape;
    uint8_t dtype = 0;
    size_t offset = 0;
    size_t num_bytes = 0;
  };
  const Entry& find(const std::string& name) const;

  std::shared_ptr<MappedFile> file_;
  std::string spec_name_;
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> aliases_;
};

// True when `folder` holds a CTranslate2 model (model.bin).
bool is_ctranslate2_folder(const std::string& folder);

}  // namespace fastlm::model
