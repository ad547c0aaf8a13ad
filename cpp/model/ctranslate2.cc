#include "model/ctranslate2.h"

#include <cstring>
#include <filesystem>

#include "core/status.h"

namespace fastlm::model {
namespace {

class Reader {
 public:
  Reader(const MappedFile& f) : f_(f) {}
  template <typename T>
  T read() {
    need(sizeof(T), "a number");
    T v;
    std::memcpy(&v, f_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string string() {
    const uint16_t n = read<uint16_t>();
    need(n, "a string");
    // The length counts the terminating NUL.
    std::string s(reinterpret_cast<const char*>(f_.data() + pos_), n > 0 ? n - 1 : 0);
    pos_ += n;
    return s;
  }
  size_t skip(size_t n) {
    need(n, "variable data");
    const size_t at = pos_;
    pos_ += n;
    return at;
  }
  size_t pos() const { return pos_; }

 private:
  void need(size_t n, const char* what) const {
    FASTLM_CHECK(pos_ + n <= f_.size(), f_.path(), " is truncated: reading ", what, " at byte ",
                 pos_);
  }
  const MappedFile& f_;
  size_t pos_ = 0;
};

}  // namespace

bool is_ctranslate2_folder(const std::string& folder) {
  return std::filesystem::is_regular_file(std::filesystem::path(folder) / "model.bin");
}

Ctranslate2Source::Ctranslate2Source(const std::string& folder) {
  file_ = MappedFile::open((std::filesystem::path(folder) / "model.bin").string());
  Reader r(*file_);
  const uint32_t version = r.read<uint32_t>();
  FASTLM_CHECK(version >= 3 && version <= 6, file_->path(), ": CTranslate2 binary version ",
               version, " is not supported (3 to 6 are)");
  spec_name_ = r.string();
  r.read<uint32_t>();  // spec revision
  const uint32_t count = r.read<uint32_t>();
  for (uint32_t i = 0; i < count; ++i) {
    std::string name = r.string();
    Entry e;
    const uint8_t rank = r.read<uint8_t>();
    int64_t numel = 1;
    for (uint8_t d = 0; d < rank; ++d) {
      e.shape.push_back(r.read<uint32_t>());
      numel *= e.shape.back();
    }
    e.dtype = r.read<uint8_t>();
    e.num_bytes = r.read<uint32_t>();
    e.offset = r.skip(e.num_bytes);
    static const size_t kSizes[] = {4, 1, 2, 4, 2, 2};
    FASTLM_CHECK(e.dtype < 6, file_->path(), ": variable ", name, " has unknown dtype ",
                 int{e.dtype});
    FASTLM_CHECK(static_cast<size_t>(numel) * kSizes[e.dtype] == e.num_bytes, file_->path(),
                 ": variable ", name, " holds ", e.num_bytes, " bytes for ", numel, " elements");
    entries_[name] = std::move(e);
  }
  const uint32_t num_aliases = r.read<uint32_t>();
  for (uint32_t i = 0; i < num_aliases; ++i) {
    std::string alias = r.string();
    aliases_[alias] = r.string();
  }
}

const Ctranslate2Source::Entry& Ctranslate2Source::find(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) {
    auto a = aliases_.find(name);
    if (a != aliases_.end()) it = entries_.find(a->second);
  }
  FASTLM_CHECK(it != entries_.end(), file_->path(), " has no variable ", name);
  return it->second;
}

bool Ctranslate2Source::has(const std::string& name) const {
  return entries_.contains(name) || aliases_.contains(name);
}

Tensor Ctranslate2Source::get(const std::string& name) const {
  const Entry& e = find(name);
  DType dtype;
  switch (e.dtype) {
    case 0:
      dtype = DType::kF32;
      break;
    case 4:
      dtype = DType::kF16;
      break;
    case 5:
      dtype = DType::kBF16;
      break;
    default:
      throw Error(detail::concat(file_->path(), ": variable ", name, " is quantized (dtype ",
                                 int{e.dtype},
                                 "); fastlm reads float32, float16 and bfloat16 CTranslate2 "
                                 "models (convert with --quantization float16)"));
  }
  return Tensor::view(const_cast<uint8_t*>(file_->data() + e.offset), e.shape, dtype, file_);
}

std::vector<std::string> Ctranslate2Source::names() const {
  std::vector<std::string> out;
  for (const auto& [name, e] : entries_) out.push_back(name);
  for (const auto& [alias, target] : aliases_) out.push_back(alias);
  return out;
}

int64_t Ctranslate2Source::scalar(const std::string& name, int64_t fallback) const {
  if (!has(name)) return fallback;
  const Entry& e = find(name);
  FASTLM_CHECK(e.shape.empty(), file_->path(), ": variable ", name, " is not a scalar");
  const uint8_t* p = file_->data() + e.offset;
  switch (e.dtype) {
    case 1:
      return static_cast<int8_t>(*p);
    case 2: {
      int16_t v;
      std::memcpy(&v, p, 2);
      return v;
    }
    case 3: {
      int32_t v;
      std::memcpy(&v, p, 4);
      return v;
    }
    default:
      throw Error(detail::concat(file_->path(), ": variable ", name, " is not an integer"));
  }
}

}  // namespace fastlm::model
