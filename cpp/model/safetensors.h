#pragma once
// safetensors reader: an 8-byte little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets: [begin, end)}}, then the raw data. Tensors are views into
// the mmapped file.
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/mmap_file.h"
#include "model/weights.h"

namespace fastlm::model {

struct SafetensorsEntry {
  std::string dtype;  // as written: F32, F16, BF16, I64, ...
  std::vector<int64_t> shape;
  size_t begin = 0;  // byte offsets into the file
  size_t end = 0;
  std::shared_ptr<MappedFile> file;
};

// Parses one .safetensors file's header; entries point into `file`.
std::map<std::string, SafetensorsEntry> read_safetensors_header(
    const std::shared_ptr<MappedFile>& file);

class SafetensorsSource : public WeightSource {
 public:
  // `files`: one or more .safetensors paths (shards); names must not repeat across them.
  explicit SafetensorsSource(const std::vector<std::string>& files);
  bool has(const std::string& name) const override;
  // F32/F16/BF16/I32/I64/U8 views; other dtypes (F64, BOOL, F8...) throw.
  Tensor get(const std::string& name) const override;
  std::vector<std::string> names() const override;
  bool release(const void* data, size_t bytes) const override;

 private:
  std::map<std::string, SafetensorsEntry> entries_;
  std::vector<std::shared_ptr<MappedFile>> files_;  // the shards
};

}  // namespace fastlm::model
