#include "model/gguf.h"

#include <cstring>

#include "core/status.h"

namespace fastlm::model {
namespace {

// Bounds-checked little-endian cursor over the mapped file.
class Cursor {
 public:
  Cursor(const uint8_t* data, size_t size, const std::string& path)
      : data_(data), size_(size), path_(path) {}

  template <typename T>
  T read() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string read_string() {
    const uint64_t n = read<uint64_t>();
    need(n);
    std::string s(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return s;
  }
  void skip(uint64_t n) {
    need(n);
    pos_ += n;
  }
  size_t pos() const { return pos_; }

 private:
  void need(uint64_t n) const {
    FASTLM_CHECK(n <= size_ - pos_, path_, ": truncated GGUF file (needs ", n, " bytes at ", pos_,
                 ")");
  }
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  const std::string& path_;
};

size_t scalar_size(GgufValueType t) {
  switch (t) {
    case GgufValueType::kU8:
    case GgufValueType::kI8:
    case GgufValueType::kBool:
      return 1;
    case GgufValueType::kU16:
    case GgufValueType::kI16:
      return 2;
    case GgufValueType::kU32:
    case GgufValueType::kI32:
    case GgufValueType::kF32:
      return 4;
    case GgufValueType::kU64:
    case GgufValueType::kI64:
    case GgufValueType::kF64:
      return 8;
    case GgufValueType::kString:
    case GgufValueType::kArray:
      return 0;
  }
  return 0;
}

bool is_integer(GgufValueType t) {
  switch (t) {
    case GgufValueType::kU8:
    case GgufValueType::kI8:
    case GgufValueType::kU16:
    case GgufValueType::kI16:
    case GgufValueType::kU32:
    case GgufValueType::kI32:
    case GgufValueType::kU64:
    case GgufValueType::kI64:
    case GgufValueType::kBool:
      return true;
    case GgufValueType::kF32:
    case GgufValueType::kF64:
    case GgufValueType::kString:
    case GgufValueType::kArray:
      return false;
  }
  return false;
}

GgufValueType checked_type(uint32_t raw, const std::string& path) {
  FASTLM_CHECK(raw <= 12, path, ": unknown GGUF metadata value type ", raw);
  return static_cast<GgufValueType>(raw);
}

// Reads one scalar into v (type already set).
void read_scalar(Cursor& c, GgufValueType t, GgufValue& v) {
  switch (t) {
    case GgufValueType::kU8:
      v.i = c.read<uint8_t>();
      break;
    case GgufValueType::kI8:
      v.i = c.read<int8_t>();
      break;
    case GgufValueType::kU16:
      v.i = c.read<uint16_t>();
      break;
    case GgufValueType::kI16:
      v.i = c.read<int16_t>();
      break;
    case GgufValueType::kU32:
      v.i = c.read<uint32_t>();
      break;
    case GgufValueType::kI32:
      v.i = c.read<int32_t>();
      break;
    case GgufValueType::kU64:
      v.i = static_cast<int64_t>(c.read<uint64_t>());
      break;
    case GgufValueType::kI64:
      v.i = c.read<int64_t>();
      break;
    case GgufValueType::kBool:
      v.i = c.read<uint8_t>() != 0;
      break;
    case GgufValueType::kF32:
      v.f = c.read<float>();
      return;
    case GgufValueType::kF64:
      v.f = c.read<double>();
      return;
    case GgufValueType::kString:
      v.s = c.read_string();
      return;
    case GgufValueType::kArray:
      throw Error("GGUF: nested arrays are not supported");
  }
  v.f = static_cast<double>(v.i);
}

GgufValue read_value(Cursor& c, GgufValueType t, const std::string& path) {
  GgufValue v;
  v.type = t;
  if (t != GgufValueType::kArray) {
    read_scalar(c, t, v);
    return v;
  }
  v.array_type = checked_type(c.read<uint32_t>(), path);
  v.array_len = c.read<uint64_t>();
  if (v.array_type == GgufValueType::kString) {
    v.array_strings.reserve(v.array_len);
    for (uint64_t k = 0; k < v.array_len; ++k) v.array_strings.push_back(c.read_string());
  } else if (v.array_type == GgufValueType::kArray) {
    throw Error(path + ": nested GGUF arrays are not supported");
  } else if (is_integer(v.array_type)) {
    v.array_ints.reserve(v.array_len);
    GgufValue e;
    for (uint64_t k = 0; k < v.array_len; ++k) {
      read_scalar(c, v.array_type, e);
      v.array_ints.push_back(e.i);
    }
  } else {
    v.array_floats.reserve(v.array_len);
    GgufValue e;
    for (uint64_t k = 0; k < v.array_len; ++k) {
      read_scalar(c, v.array_type, e);
      v.array_floats.push_back(e.f);
    }
  }
  return v;
}

}  // namespace

int64_t GgufTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

std::shared_ptr<GgufFile> GgufFile::open(const std::string& path) {
  auto g = std::make_shared<GgufFile>();
  g->file_ = MappedFile::open(path);
  Cursor c(g->file_->data(), g->file_->size(), path);
  const uint32_t magic = c.read<uint32_t>();
  FASTLM_CHECK(magic == 0x46554747u, path, ": not a GGUF file (bad magic)");
  g->version_ = c.read<uint32_t>();
  FASTLM_CHECK(g->version_ == 2 || g->version_ == 3, path, ": GGUF version ", g->version_,
               " is not supported (2 or 3)");
  const uint64_t n_tensors = c.read<uint64_t>();
  const uint64_t n_kv = c.read<uint64_t>();
  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key = c.read_string();
    const GgufValueType t = checked_type(c.read<uint32_t>(), path);
    g->metadata_[key] = read_value(c, t, path);
  }
  struct RawInfo {
    GgufTensorInfo info;
    uint64_t offset;
  };
  std::vector<RawInfo> raw;
  raw.reserve(n_tensors);
  for (uint64_t k = 0; k < n_tensors; ++k) {
    RawInfo r;
    r.info.name = c.read_string();
    const uint32_t n_dims = c.read<uint32_t>();
    FASTLM_CHECK(n_dims >= 1 && n_dims <= 4, path, ": tensor ", r.info.name, " has ", n_dims,
                 " dims");
    for (uint32_t d = 0; d < n_dims; ++d) r.info.ne.push_back(c.read<int64_t>());
    const uint32_t type = c.read<uint32_t>();
    FASTLM_CHECK(ggml_type_supported(type), path, ": tensor ", r.info.name, " uses ggml type ",
                 type,
                 ", which fastlm does not read (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, "
                 "Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS)");
    r.info.type = static_cast<GgmlType>(type);
    r.offset = c.read<uint64_t>();
    raw.push_back(std::move(r));
  }
  const int64_t alignment = g->get_int("general.alignment", 32);
  FASTLM_CHECK(alignment > 0, path, ": bad general.alignment");
  const size_t data_start = (c.pos() + alignment - 1) / alignment * alignment;
  for (auto& r : raw) {
    GgufTensorInfo& info = r.info;
    info.nbytes = ggml_row_bytes(info.type, info.ne[0]) * (info.numel() / info.ne[0]);
    FASTLM_CHECK(data_start + r.offset + info.nbytes <= g->file_->size(), path, ": tensor ",
                 info.name, " lies past the end of the file");
    info.data = g->file_->data() + data_start + r.offset;
    g->index_[info.name] = g->tensors_.size();
    g->tensors_.push_back(std::move(info));
  }
  return g;
}

const GgufTensorInfo* GgufFile::find(const std::string& gguf_name) const {
  auto it = index_.find(gguf_name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

int64_t GgufFile::get_int(const std::string& key, int64_t fallback) const {
  auto it = metadata_.find(key);
  if (it == metadata_.end()) return fallback;
  FASTLM_CHECK(is_integer(it->second.type), "GGUF metadata ", key, " is not an integer");
  return it->second.i;
}

double GgufFile::get_float(const std::string& key, double fallback) const {
  auto it = metadata_.find(key);
  if (it == metadata_.end()) return fallback;
  FASTLM_CHECK(
      it->second.type != GgufValueType::kString && it->second.type != GgufValueType::kArray,
      "GGUF metadata ", key, " is not a number");
  return it->second.f;
}

std::string GgufFile::get_string(const std::string& key, const std::string& fallback) const {
  auto it = metadata_.find(key);
  if (it == metadata_.end()) return fallback;
  FASTLM_CHECK(it->second.type == GgufValueType::kString, "GGUF metadata ", key,
               " is not a string");
  return it->second.s;
}

Tensor GgufFile::dequantized(const GgufTensorInfo& info) const {
  Tensor out = Tensor::empty(info.shape(), DType::kF32);
  dequantize(info.type, info.data, out.data<float>(), info.numel());
  return out;
}

Tensor GgufFile::view(const GgufTensorInfo& info) const {
  DType dtype = DType::kF32;
  switch (info.type) {
    case GgmlType::kF32:
      dtype = DType::kF32;
      break;
    case GgmlType::kF16:
      dtype = DType::kF16;
      break;
    case GgmlType::kBF16:
      dtype = DType::kBF16;
      break;
    case GgmlType::kQ4_0:
    case GgmlType::kQ4_1:
    case GgmlType::kQ5_0:
    case GgmlType::kQ5_1:
    case GgmlType::kQ8_0:
    case GgmlType::kQ4_K:
    case GgmlType::kQ5_K:
    case GgmlType::kQ6_K:
    case GgmlType::kQ2_K:
    case GgmlType::kQ3_K:
    case GgmlType::kIQ4_NL:
    case GgmlType::kIQ4_XS:
      throw Error(detail::concat("GGUF tensor ", info.name, " is quantized (",
                                 ggml_type_name(info.type), "); it has no float view"));
  }
  return Tensor::view(const_cast<uint8_t*>(info.data), info.shape(), dtype, mapping());
}

}  // namespace fastlm::model
