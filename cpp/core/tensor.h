#pragma once
// A dense, row-major tensor on one device. Storage is shared (std::shared_ptr holder), so a
// Tensor can own a buffer from its device's Allocator (core/allocator.h) or view memory owned
// elsewhere (an mmapped weight file, a numpy array). Copies are shallow; views (reshape,
// slice_rows) share storage. Data moves between devices only through copy_from / copy_to.
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <vector>

#include "core/allocator.h"
#include "core/device.h"
#include "core/dtype.h"
#include "core/status.h"

namespace fastlm {

class Tensor {
 public:
  Tensor() = default;

  // Owned by `device`'s allocator, 64-byte aligned, uninitialized.
  static Tensor empty(std::vector<int64_t> shape, DType dtype, Device device = Device::kCPU);
  static Tensor empty(std::vector<int64_t> shape, DType dtype, Allocator& allocator);
  // Owned and zeroed (on the default stream).
  static Tensor zeros(std::vector<int64_t> shape, DType dtype, Device device = Device::kCPU);
  // Non-owning view of memory on `device`: `holder` keeps it alive (may be null for static
  // memory).
  static Tensor view(void* data, std::vector<int64_t> shape, DType dtype,
                     std::shared_ptr<void> holder = nullptr, Device device = Device::kCPU);

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
  // Host tensors: deep copy converted to `dtype` (float types only).
  Tensor to(DType dtype) const;
  // Deep copy on `device` (same shape and dtype), ordered on `stream`.
  Tensor copy_to(Device device, void* stream = nullptr) const;
  // Copies src's elements into this tensor's storage (same shape and dtype; any devices).
  void copy_from(const Tensor& src, void* stream = nullptr);

  std::string shape_str() const;

 private:
  std::shared_ptr<void> holder_;
  void* data_ = nullptr;
  std::vector<int64_t> shape_;
  DType dtype_ = DType::kF32;
  Device device_ = Device::kCPU;
};

// 1-D host views of index vectors (no copy; the vector must outlive the view and not grow).
Tensor host_view(const std::vector<int32_t>& v);
Tensor host_view(const std::vector<int64_t>& v);
// A 2-D [rows, cols] host view of a row-major int32 vector of rows * cols entries.
Tensor host_view(const std::vector<int32_t>& v, int64_t rows, int64_t cols);

// Converts n elements between float dtypes (f32/f16/bf16), any direction.
void convert_dtype(const void* src, DType src_dtype, void* dst, DType dst_dtype, int64_t n);

}  // namespace fastlm
