#pragma once
// Shared argument checks of the op entry points (user-facing messages).
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

}  // namespace fastlm::ops::detail
