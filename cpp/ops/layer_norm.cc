#include "cpu/layer_norm_cpu.h"
#include "ops/op_checks.h"
#include "ops/ops.h"

namespace fastlm::ops {

namespace {

void check_params(const char* op, const Tensor& x, const Tensor& w, const Tensor& b) {
  using namespace detail;
  check_dim(op, "x", x, 2);
  check_dim(op, "w", w, 1);
  check_dim(op, "b", b, 1);
  check_dtype(op, "x", x, DType::kF32);
  check_float(op, "w", w);
  FASTLM_CHECK_ARG(b.dtype() == w.dtype(), op, ": w and b must share a dtype, got ",
                   dtype_name(w.dtype()), " and ", dtype_name(b.dtype()));
  FASTLM_CHECK_ARG(w.size(0) == x.size(1) && b.size(0) == x.size(1), op, ": w ", w.shape_str(),
                   " / b ", b.shape_str(), " do not match x ", x.shape_str());
}

}  // namespace

void layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, float eps, Tensor& y) {
  using namespace detail;
  check_params("layer_norm", x, w, b);
  check_dtype("layer_norm", "y", y, DType::kF32);
  FASTLM_CHECK_ARG(y.shape() == x.shape(), "layer_norm: y ", y.shape_str(), " must match x ",
                   x.shape_str());
  const int64_t m = x.size(0), h = x.size(1);
  switch (common_device("layer_norm", {&x, &w, &b, &y})) {
    case Device::kCPU:
      switch (w.dtype()) {
        case DType::kF32:
          return cpu::layer_norm<DType::kF32>(x.data<float>(), w.data(), b.data(), eps,
                                              y.data<float>(), m, h);
        case DType::kBF16:
          return cpu::layer_norm<DType::kBF16>(x.data<float>(), w.data(), b.data(), eps,
                                               y.data<float>(), m, h);
        case DType::kF16:
          return cpu::layer_norm<DType::kF16>(x.data<float>(), w.data(), b.data(), eps,
                                              y.data<float>(), m, h);
        case DType::kI32:
        case DType::kI64:
        case DType::kU8:
          break;  // rejected by check_float
      }
      break;
    case Device::kCUDA:
      no_cuda("layer_norm");
  }
}

void add_layer_norm(Tensor& residual, const Tensor& x, const Tensor& w, const Tensor& b,
                    float eps) {
  using namespace detail;
  check_params("add_layer_norm", x, w, b);
  check_dtype("add_layer_norm", "residual", residual, DType::kF32);
  FASTLM_CHECK_ARG(residual.shape() == x.shape(), "add_layer_norm: residual ", residual.shape_str(),
                   " must match x ", x.shape_str());
  const int64_t m = x.size(0), h = x.size(1);
  switch (common_device("add_layer_norm", {&residual, &x, &w, &b})) {
    case Device::kCPU:
      switch (w.dtype()) {
        case DType::kF32:
          return cpu::add_layer_norm<DType::kF32>(residual.data<float>(), x.data<float>(), w.data(),
                                                  b.data(), eps, m, h);
        case DType::kBF16:
          return cpu::add_layer_norm<DType::kBF16>(residual.data<float>(), x.data<float>(),
                                                   w.data(), b.data(), eps, m, h);
        case DType::kF16:
          return cpu::add_layer_norm<DType::kF16>(residual.data<float>(), x.data<float>(), w.data(),
                                                  b.data(), eps, m, h);
        case DType::kI32:
        case DType::kI64:
        case DType::kU8:
          break;  // rejected by check_float
      }
      break;
    case Device::kCUDA:
      no_cuda("add_layer_norm");
  }
}

}  // namespace fastlm::ops
