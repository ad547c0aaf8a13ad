#include <span>
#include <vector>

#include "core/status.h"
#include "cpu/gelu_cpu.h"
#include "cpu/gemm_pack.h"
#include "cpu/linear_cpu.h"
#include "cpu/qgemm_cpu.h"
#include "ops/dispatch.h"
#include "ops/op_checks.h"
#include "ops/ops.h"
#include "ops/prepack.h"

namespace fastlm::ops {
namespace {

// Shapes, bias, weight dtype, aliasing and device of y[M,N] = x[M,K] @ w[N,K]^T (+ bias[N]),
// shared by both entry points; x / y dtypes are checked by each.
void check_linear(ExecContext& ctx, const Tensor& x, const Tensor& w, const Tensor* bias,
                  const Tensor& y) {
  using namespace detail;
  check_dim("linear", "x", x, 2);
  check_dim("linear", "w", w, 2);
  check_dim("linear", "y", y, 2);
  const int64_t m = x.size(0), k = x.size(1), n = w.size(0);
  FASTLM_CHECK_ARG(w.size(1) == k, "linear: x ", x.shape_str(), " and w ", w.shape_str(),
                   " disagree on in_features");
  FASTLM_CHECK_ARG(y.size(0) == m && y.size(1) == n, "linear: y must be [", m, ", ", n, "], got ",
                   y.shape_str());
  FASTLM_CHECK_ARG(y.data() != x.data() || m * n == 0, "linear: y must not alias x");
  if (bias != nullptr) {
    check_dim("linear", "bias", *bias, 1);
    check_dtype("linear", "bias", *bias, DType::kF32);
    FASTLM_CHECK_ARG(bias->size(0) == n, "linear: bias must be [", n, "], got ", bias->shape_str());
    check_device(ctx, "linear", {bias});
  }
  check_device(ctx, "linear", {&x, &w, &y});
}

}  // namespace

std::shared_ptr<const void> prepack_linear(const Tensor& w) {
  detail::check_dim("prepack_linear", "w", w, 2);
  FASTLM_CHECK_ARG(w.dtype() == DType::kF32 || w.dtype() == DType::kBF16,
                   "prepack_linear: weights must be float32 or bfloat16, got ",
                   dtype_name(w.dtype()));
  switch (w.device()) {
    case Device::kCPU:
      return cpu::pack_weights(w.data(), w.dtype() == DType::kBF16, w.size(0), w.size(1));
    case Device::kCUDA:
      return nullptr;
  }
  return nullptr;
}

size_t prepacked_bytes(const std::shared_ptr<const void>& handle) {
  if (handle == nullptr) return 0;  // only the CPU backend packs (cpu::PackedWeights)
  const auto& p = *static_cast<const cpu::PackedWeights*>(handle.get());
  return p.bytes();
}

void move_prepacked(const std::shared_ptr<const void>& handle, void* dst,
                    std::shared_ptr<void> owner) {
  FASTLM_CHECK_ARG(handle != nullptr, "move_prepacked: null handle");
  cpu::move_panels(*static_cast<const cpu::PackedWeights*>(handle.get()), dst, std::move(owner));
}

void linear(ExecContext& ctx, const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) {
  detail::check_dtype("linear", "y", y, x.dtype());
  check_linear(ctx, x, w, bias, y);
  const int64_t m = x.size(0), k = x.size(1), n = w.size(0);
  const float* b = bias ? bias->data<float>() : nullptr;
  using namespace detail;
  dispatch(ctx, "linear", Axis<F32Only>{x.dtype(), "x"}, Axis<CacheTypes>{w.dtype(), "weights"},
           [&](auto device, auto, auto wt) {
             if constexpr (!is_cpu<decltype(device)>) {
               no_kernel(device, "linear");
             } else if constexpr (decltype(wt)::value == DType::kF32) {
               cpu::linear_f32(x.data<float>(), w.data<float>(), b, y.data<float>(), m, n, k);
             } else {
               cpu::linear_bf16(x.data<float>(), w.data<uint16_t>(), b, y.data<float>(), m, n, k);
             }
           });
}

void linear(ExecContext& ctx, const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y,
            Activation act) {
  const auto f32_or_bf16 = [](const Tensor& t) {
    return t.dtype() == DType::kF32 || t.dtype() == DType::kBF16;
  };
  FASTLM_CHECK_ARG(f32_or_bf16(x) && f32_or_bf16(y), "linear: x and y must be float32 or bfloat16");
  if (act == Activation::kNone && x.dtype() == DType::kF32 && y.dtype() == DType::kF32) {
    return linear(ctx, x, w, bias, y);
  }
  check_linear(ctx, x, w, bias, y);
  FASTLM_CHECK_ARG(w.dtype() == DType::kF32 || w.dtype() == DType::kBF16,
                   "linear: weights must be float32 or bfloat16, got ", dtype_name(w.dtype()));
  if (ctx.device != Device::kCPU) detail::no_kernel(ctx.device, "linear");
  const int64_t m = x.size(0), k = x.size(1), n = w.size(0);
  if (cpu::linear_fused(x.data(), x.dtype() == DType::kBF16, w.data(), w.dtype() == DType::kBF16,
                        bias ? bias->data<float>() : nullptr, y.data(), y.dtype() == DType::kBF16,
                        act, m, n, k)) {
    return;
  }
  // Composed: float32 x and y around the plain linear, then the activation, then rounding.
  Tensor xf = x;
  if (x.dtype() != DType::kF32) {
    xf = Tensor::empty({m, k}, DType::kF32);
    convert_dtype(x.data(), x.dtype(), xf.data(), DType::kF32, m * k);
  }
  Tensor yf = y.dtype() == DType::kF32 ? y : Tensor::empty({m, n}, DType::kF32);
  linear(ctx, xf, w, bias, yf);
  if (act != Activation::kNone) {
    cpu::gelu(yf.data<float>(), m * n, act == Activation::kGeluTanh);
  }
  if (y.dtype() != DType::kF32) {
    convert_dtype(yf.data(), DType::kF32, y.data(), y.dtype(), m * n);
  }
}

void linear_per_request(ExecContext& ctx, const Tensor& x, const Tensor& w, const Tensor* bias,
                        Tensor& y, Activation act) {
  const auto f32_or_bf16 = [](const Tensor& t) {
    return t.dtype() == DType::kF32 || t.dtype() == DType::kBF16;
  };
  if (ctx.device == Device::kCPU && f32_or_bf16(x) && f32_or_bf16(y) && f32_or_bf16(w)) {
    check_linear(ctx, x, w, bias, y);
    if (cpu::linear_fused_per_request(
            x.data(), x.dtype() == DType::kBF16, w.data(), w.dtype() == DType::kBF16,
            bias ? bias->data<float>() : nullptr, y.data(), y.dtype() == DType::kBF16, act,
            x.size(0), w.size(0), x.size(1))) {
      return;
    }
  }
  linear(ctx, x, w, bias, y, act);
}

void linear(ExecContext& ctx, const Tensor& x, const Weight& w, const Tensor* bias, Tensor& y) {
  if (!w.is_packed() && !w.is_stacked()) return linear(ctx, x, w.dense, bias, y);
  using namespace detail;
  check_dtype("linear", "x", x, DType::kF32);
  check_dtype("linear", "y", y, DType::kF32);
  check_dim("linear", "x", x, 2);
  check_dim("linear", "y", y, 2);
  const int64_t m = x.size(0), k = x.size(1), n = w.rows;
  FASTLM_CHECK_ARG(w.cols == k, "linear: x ", x.shape_str(), " and a ",
                   w.is_stacked() ? "stacked" : qtype_name(w.qtype), " weight of ", w.rows, " x ",
                   w.cols, " disagree on in_features");
  FASTLM_CHECK_ARG(y.size(0) == m && y.size(1) == n, "linear: y must be [", m, ", ", n, "], got ",
                   y.shape_str());
  if (bias != nullptr) {
    check_dim("linear", "bias", *bias, 1);
    check_dtype("linear", "bias", *bias, DType::kF32);
    FASTLM_CHECK_ARG(bias->size(0) == n, "linear: bias must be [", n, "], got ", bias->shape_str());
    check_device(ctx, "linear", {bias});
  }
  check_device(ctx, "linear", {&x, &y});
  // A stacked weight's packed parts fill their own columns of y (qgemm's ldy) with their slices
  // of the bias: a row's numbers are those of its part's matrix alone.
  const std::span<const Weight> parts =
      w.is_stacked() ? std::span<const Weight>(w.parts) : std::span<const Weight>(&w, 1);
  int64_t rows = 0;
  for (const Weight& p : parts) {
    FASTLM_CHECK_ARG(
        p.is_packed() && p.cols == k &&
            p.packed.nbytes() == qtype_row_bytes(p.qtype, k) * static_cast<size_t>(p.rows),
        "linear: packed ", qtype_name(p.qtype), " weight holds ", p.packed.nbytes(), " bytes, not ",
        p.rows, " rows of ", k);
    check_device(ctx, "linear", {&p.packed});
    rows += p.rows;
  }
  FASTLM_CHECK_ARG(rows == n, "linear: a stacked weight's parts hold ", rows, " rows, not ", n);
  if (ctx.device != Device::kCPU) no_kernel(ctx.device, "linear");
  if (!w.is_stacked()) {
    return cpu::qgemm(x.data<float>(), w.packed.data(), w.qtype,
                      bias ? bias->data<float>() : nullptr, y.data<float>(), m, n, k);
  }
  std::vector<cpu::QgemmPart> runs;
  int64_t at = 0;
  for (const Weight& p : parts) {
    runs.push_back({p.packed.data(), p.qtype, p.rows, bias ? bias->data<float>() + at : nullptr,
                    y.data<float>() + at});
    at += p.rows;
  }
  cpu::qgemm_parts(x.data<float>(), runs.data(), static_cast<int>(runs.size()), m, k, n);
}

}  // namespace fastlm::ops
