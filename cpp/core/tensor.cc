#include "core/tensor.h"

#include <cstring>
#include <sstream>

namespace fastlm {

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int64_t s : shape_) n *= s;
  return n;
}

Tensor Tensor::empty(std::vector<int64_t> shape, DType dtype, Device device) {
  return empty(std::move(shape), dtype, allocator_for(device));
}

Tensor Tensor::empty(std::vector<int64_t> shape, DType dtype, Allocator& allocator) {
  Tensor t;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.device_ = allocator.device();
  const size_t bytes = t.nbytes();
  void* p = allocator.allocate(bytes);
  t.holder_ =
      std::shared_ptr<void>(p, [&allocator, bytes](void* q) { allocator.deallocate(q, bytes); });
  t.data_ = p;
  return t;
}

Tensor Tensor::zeros(std::vector<int64_t> shape, DType dtype, Device device) {
  Allocator& allocator = allocator_for(device);
  Tensor t = empty(std::move(shape), dtype, allocator);
  allocator.zero(t.data_, t.nbytes(), nullptr);
  return t;
}

Tensor Tensor::view(void* data, std::vector<int64_t> shape, DType dtype,
                    std::shared_ptr<void> holder, Device device) {
  Tensor t;
  t.device_ = device;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.data_ = data;
  t.holder_ = std::move(holder);
  return t;
}

Tensor Tensor::reshape(std::vector<int64_t> shape) const {
  Tensor t = *this;
  t.shape_ = std::move(shape);
  FASTLM_CHECK(t.numel() == numel(), "reshape ", shape_str(), " -> ", t.shape_str(),
               ": element count differs");
  return t;
}

Tensor Tensor::slice_rows(int64_t begin, int64_t end) const {
  FASTLM_CHECK(dim() >= 1 && begin >= 0 && begin <= end && end <= shape_[0], "slice_rows [", begin,
               ", ", end, ") out of range for ", shape_str());
  Tensor t = *this;
  const int64_t row = numel() / (shape_[0] == 0 ? 1 : shape_[0]);
  t.shape_[0] = end - begin;
  t.data_ = static_cast<char*>(data_) + begin * row * static_cast<int64_t>(dtype_size(dtype_));
  return t;
}

Tensor Tensor::to(DType dtype) const {
  FASTLM_CHECK(device_ == Device::kCPU,
               "Tensor::to(dtype) converts host tensors only, this one is on ",
               device_name(device_));
  Tensor out = Tensor::empty(shape_, dtype);
  if (dtype == dtype_) {
    std::memcpy(out.data(), data_, nbytes());
  } else {
    convert_dtype(data_, dtype_, out.data(), dtype, numel());
  }
  return out;
}

Tensor Tensor::copy_to(Device device, void* stream) const {
  Tensor out = Tensor::empty(shape_, dtype_, device);
  out.copy_from(*this, stream);
  return out;
}

void Tensor::copy_from(const Tensor& src, void* stream) {
  FASTLM_CHECK(src.shape_ == shape_ && src.dtype_ == dtype_, "copy_from: source ", src.shape_str(),
               " ", dtype_name(src.dtype_), " does not match destination ", shape_str(), " ",
               dtype_name(dtype_));
  copy_bytes(data_, device_, src.data_, src.device_, nbytes(), stream);
}

std::string Tensor::shape_str() const {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape_.size(); ++i) os << (i ? ", " : "") << shape_[i];
  os << "]";
  return os.str();
}

Tensor host_view(const std::vector<int32_t>& v) {
  return Tensor::view(const_cast<int32_t*>(v.data()), {static_cast<int64_t>(v.size())},
                      DType::kI32);
}

Tensor host_view(const std::vector<int64_t>& v) {
  return Tensor::view(const_cast<int64_t*>(v.data()), {static_cast<int64_t>(v.size())},
                      DType::kI64);
}

Tensor host_view(const std::vector<int32_t>& v, int64_t rows, int64_t cols) {
  FASTLM_CHECK(static_cast<int64_t>(v.size()) == rows * cols, "host_view: ", v.size(),
               " entries are not ", rows, " x ", cols);
  return Tensor::view(const_cast<int32_t*>(v.data()), {rows, cols}, DType::kI32);
}

void convert_dtype(const void* src, DType src_dtype, void* dst, DType dst_dtype, int64_t n) {
  auto is_float = [](DType d) { return d == DType::kF32 || d == DType::kF16 || d == DType::kBF16; };
  FASTLM_CHECK(is_float(src_dtype) && is_float(dst_dtype), "convert_dtype: ", dtype_name(src_dtype),
               " -> ", dtype_name(dst_dtype), " is not a float conversion");
  auto load = [&](int64_t i) -> float {
    switch (src_dtype) {
      case DType::kF32:
        return static_cast<const float*>(src)[i];
      case DType::kF16:
        return f16_to_f32(static_cast<const uint16_t*>(src)[i]);
      case DType::kBF16:
        return bf16_to_f32(static_cast<const uint16_t*>(src)[i]);
      case DType::kI32:
      case DType::kI64:
      case DType::kU8:
        break;
    }
    return 0.0f;  // unreachable: checked above
  };
  switch (dst_dtype) {
    case DType::kF32: {
      float* d = static_cast<float*>(dst);
#pragma omp parallel for schedule(static) if (n > (1 << 16))
      for (int64_t i = 0; i < n; ++i) d[i] = load(i);
      return;
    }
    case DType::kF16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
#pragma omp parallel for schedule(static) if (n > (1 << 16))
      for (int64_t i = 0; i < n; ++i) d[i] = f32_to_f16(load(i));
      return;
    }
    case DType::kBF16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
#pragma omp parallel for schedule(static) if (n > (1 << 16))
      for (int64_t i = 0; i < n; ++i) d[i] = f32_to_bf16(load(i));
      return;
    }
    case DType::kI32:
    case DType::kI64:
    case DType::kU8:
      break;
  }
  throw Error(std::string("convert_dtype: unsupported target ") + dtype_name(dst_dtype));
}

}  // namespace fastlm
