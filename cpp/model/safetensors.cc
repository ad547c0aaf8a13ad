#include "model/safetensors.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/status.h"

namespace fastlm::model {
namespace {

using json = nlohmann::json;

size_t safetensors_dtype_size(const std::string& d) {
  if (d == "F64" || d == "I64" || d == "U64") return 8;
  if (d == "F32" || d == "I32" || d == "U32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
  if (d == "I8" || d == "U8" || d == "BOOL" || d == "F8_E4M3" || d == "F8_E5M2") return 1;
  return 0;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  FASTLM_CHECK(in.good(), "cannot read ", path);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

}  // namespace

std::map<std::string, SafetensorsEntry> read_safetensors_header(
    const std::shared_ptr<MappedFile>& file) {
  const std::string& path = file->path();
  FASTLM_CHECK(file->size() >= 8, path, ": not a safetensors file (too short)");
  uint64_t header_len = 0;
  std::memcpy(&header_len, file->data(), 8);  // little-endian on every target we build for
  FASTLM_CHECK(header_len <= file->size() - 8, path, ": header length ", header_len,
               " exceeds the file size");
  json header;
  try {
    header = json::parse(file->data() + 8, file->data() + 8 + header_len);
  } catch (const json::exception& e) {
    throw Error(detail::concat(path, ": bad safetensors header: ", e.what()));
  }
  const size_t data_start = 8 + header_len;
  std::map<std::string, SafetensorsEntry> out;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") continue;
    SafetensorsEntry e;
    e.file = file;
    e.dtype = info.at("dtype").get<std::string>();
    e.shape = info.at("shape").get<std::vector<int64_t>>();
    const auto offsets = info.at("data_offsets").get<std::vector<size_t>>();
    FASTLM_CHECK(offsets.size() == 2 && offsets[0] <= offsets[1], path, ": tensor ", name,
                 " has bad data_offsets");
    e.begin = data_start + offsets[0];
    e.end = data_start + offsets[1];
    FASTLM_CHECK(e.end <= file->size(), path, ": tensor ", name, " lies past the end of the file");
    int64_t numel = 1;
    for (int64_t s : e.shape) numel *= s;
    const size_t elem = safetensors_dtype_size(e.dtype);
    FASTLM_CHECK(elem == 0 || static_cast<size_t>(numel) * elem == e.end - e.begin, path,
                 ": tensor ", name, " size does not match its shape and dtype");
    out.emplace(name, std::move(e));
  }
  return out;
}

SafetensorsSource::SafetensorsSource(const std::vector<std::string>& files) {
  for (const auto& f : files) {
    files_.push_back(MappedFile::open(f));
    auto entries = read_safetensors_header(files_.back());
    for (auto& [name, e] : entries) {
      FASTLM_CHECK(!entries_.count(name), "tensor ", name, " appears in more than one shard");
      entries_.emplace(name, std::move(e));
    }
  }
}

bool SafetensorsSource::has(const std::string& name) const { return entries_.count(name) > 0; }

Tensor SafetensorsSource::get(const std::string& name) const {
  auto it = entries_.find(name);
  FASTLM_CHECK(it != entries_.end(), "missing tensor ", name, " in the safetensors checkpoint");
  const SafetensorsEntry& e = it->second;
  DType dtype;
  if (e.dtype == "F32") {
    dtype = DType::kF32;
  } else if (e.dtype == "F16") {
    dtype = DType::kF16;
  } else if (e.dtype == "BF16") {
    dtype = DType::kBF16;
  } else if (e.dtype == "I32") {
    dtype = DType::kI32;
  } else if (e.dtype == "I64") {
    dtype = DType::kI64;
  } else if (e.dtype == "U8") {
    dtype = DType::kU8;
  } else {
    throw Error(detail::concat("tensor ", name, " has unsupported safetensors dtype ", e.dtype));
  }
  // The view keeps the mapping alive; weights are never written through it (PROT_READ).
  void* p = const_cast<uint8_t*>(e.file->data() + e.begin);
  return Tensor::view(p, e.shape, dtype, std::static_pointer_cast<void>(e.file));
}

bool SafetensorsSource::release(const void* data, size_t bytes) const {
  for (const auto& f : files_) {
    if (f->release(data, bytes)) return true;
  }
  return false;
}

std::vector<std::string> SafetensorsSource::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& [name, e] : entries_) out.push_back(name);
  return out;
}

std::unique_ptr<WeightSource> open_safetensors(const std::string& folder) {
  namespace fs = std::filesystem;
  const fs::path dir(folder);
  const fs::path single = dir / "model.safetensors";
  const fs::path index = dir / "model.safetensors.index.json";
  std::vector<std::string> files;
  if (fs::exists(index)) {
    json j;
    try {
      j = json::parse(read_text(index.string()));
    } catch (const json::exception& e) {
      throw Error(detail::concat(index.string(), ": bad JSON: ", e.what()));
    }
    std::set<std::string> shards;
    for (const auto& [name, shard] : j.at("weight_map").items()) {
      shards.insert(shard.get<std::string>());
    }
    for (const auto& s : shards) files.push_back((dir / s).string());
  } else if (fs::exists(single)) {
    files.push_back(single.string());
  } else {
    throw Error(detail::concat("no model.safetensors or model.safetensors.index.json in ", folder));
  }
  return std::make_unique<SafetensorsSource>(files);
}

}  // namespace fastlm::model
