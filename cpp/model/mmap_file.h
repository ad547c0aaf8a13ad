#pragma once
// A read-only memory mapping of a whole file. Tensors viewing it hold a shared_ptr to it, so the
// mapping lives as long as any weight does.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace fastlm::model {

class MappedFile {
 public:
  // Throws fastlm::Error naming the file when it cannot be opened or mapped.
  static std::shared_ptr<MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Drops this process's resident copies of the whole pages inside [p, p + n) (no-op for a
  // range outside the mapping): for bytes the caller copied and will not read again, so that
  // only the copy stays resident. A later read faults the pages back in from the file. True
  // when the range lies inside the mapping.
  bool release(const void* p, size_t n) const;
  // Whether [p, p + n) lies inside the mapping (a view of the file, not a copy).
  bool maps(const void* p, size_t n) const;

 private:
  MappedFile() = default;
  std::string path_;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace fastlm::model
