#pragma once
// Shared argument checks of the op entry points (user-facing messages).
#include <cstdint>
#include <initializer_list>
#include <string>

#include "core/status.h"
#include "core/tensor.h"

namespace fastlm::ops::detail {

inline void check_defined(const char* op, const char* name, const Tensor& t) {
  FASTLM_CHECK_ARG(t.data() != nullptr || t.numel() == 0, op, ": ", name, " is undefined");
}

inline void check_dim(const char* op, const char* name, const Tensor& t, int dim) {
  check_defined(op, name, t);
  FASTLM_CHECK_ARG(t.dim() == dim, op, ": ", name, " must be ", dim, "-D, got ", t.shape_str());
}

inline void check_dtype(const char* op, const char* name, const Tensor& t, DType dtype) {
  FASTLM_CHECK_ARG(t.dtype() == dtype, op, ": ", name, " must be ", dtype_name(dtype), ", got ",
                   dtype_name(t.dtype()));
}

inline void check_float(const char* op, const char* name, const Tensor& t) {
  const DType d = t.dtype();
  FASTLM_CHECK_ARG(d == DType::kF32 || d == DType::kBF16 || d == DType::kF16, op, ": ", name,
                   " must be float32, bfloat16 or float16, got ", dtype_name(d));
}

// The usual entry check of one tensor: defined, `rank`-D, of `dtype`.
inline void check_tensor(const char* op, const char* name, const Tensor& t, int rank, DType dtype) {
  check_dim(op, name, t, rank);
  check_dtype(op, name, t, dtype);
}

// Defined, of `dtype`, and exactly `shape` (an entry of -1 accepts any size on that axis).
inline void check_shape(const char* op, const char* name, const Tensor& t, DType dtype,
                        std::initializer_list<int64_t> shape) {
  check_tensor(op, name, t, static_cast<int>(shape.size()), dtype);
  int axis = 0;
  for (int64_t n : shape) {
    FASTLM_CHECK_ARG(n < 0 || t.size(axis) == n, op, ": ", name, " ", t.shape_str(), " must have ",
                     n, " entries on axis ", axis);
    ++axis;
  }
}

}  // namespace fastlm::ops::detail
