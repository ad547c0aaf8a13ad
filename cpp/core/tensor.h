#pragma once
// A dense, row-major tensor on one device. Storage is shared (std::shared_ptr holder), so a
// Tensor can own a 64-byte aligned buffer or view memory owned elsewhere (an mmapped weight
// file, a numpy array). Copies are shallow.
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <vector>

#include "core/device.h"
#include "core/dtype.h"
#include "core/status.h"

namespace fastlm {

class Tensor {
 public:
  Tensor() = default;

  // Owned, 64-byte aligned, uninitialized (zeroed when zero = true).
  static Tensor empty(std::vector<int64_t> shape, DType dtype, bool zero = false);
  static Tensor zeros(std::vector<int64_t> shape, DType dtype) { return empty(shape, dtype, true); }
  // Non-owning view: `holder` keeps the memory alive (may be null for static memory).
  static Tensor view(void* data, std::vector<int64_t> shape, DType dtype,
                     std::shared_ptr<void> holder = nullptr);

  bool defined() const { return data_ != nullptr || (numel() == 0 && !shape_.empty()); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int dim() const { return static_cast<int>(shape_.size()); }
  int64_t size(int i) const { return shape_.at(i < 0 ? i + dim() : i); }
  int64_t numel() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }

  void* data() const { return data_; }
  template <typename T>
  T* data() const {
    return static_cast<T*>(data_);
  }

  // Same storage, new shape (numel must match).
  Tensor reshape(std::vector<int64_t> shape) const;
  // Rows [begin, end) of dimension 0, sharing storage.
  Tensor slice_rows(int64_t begin, int64_t end) const;
  // Deep copy converted to `dtype` (float types only).
  Tensor to(DType dtype) const;

  std::string shape_str() const;

 private:
  std::shared_ptr<void> holder_;
  void* data_ = nullptr;
  std::vector<int64_t> shape_;
  DType dtype_ = DType::kF32;
  Device device_ = Device::kCPU;
};

// Converts n elements between float dtypes (f32/f16/bf16), any direction.
void convert_dtype(const void* src, DType src_dtype, void* dst, DType dst_dtype, int64_t n);

}  // namespace fastlm
