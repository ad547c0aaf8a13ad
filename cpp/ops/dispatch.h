#pragma once
// The one dispatch of the op entry points: device x activation dtype x weight dtype. An op lists
// the dtypes it accepts on each axis and passes one generic lambda that receives compile-time
// constants (std::integral_constant) for the device and each dtype:
//
//   dispatch(ctx, "rms_norm", {{x.dtype(), kF32Only}, {w.dtype(), kFloatTypes}},
//            [&](auto device, auto act, auto weight) {
//              if constexpr (is_cpu<decltype(device)>) cpu::rms_norm<decltype(weight)::value>(...);
//              else no_kernel(device, "rms_norm");   // a CUDA body goes here
//            });
//
// The switches below name every enum value and have no `default`: adding a DType or Device
// fails to compile here until it is handled, and a dtype an op does not list is refused with an
// InvalidArgument naming the op, the axis and the accepted dtypes.
#include <string>
#include <type_traits>

#include "core/exec_context.h"
#include "core/status.h"

namespace fastlm::ops::detail {

template <DType... Ds>
struct DTypes {
  static constexpr bool contains(DType d) { return ((d == Ds) || ...); }
  // "float32", "float32 or bfloat16", "float32, bfloat16 or float16".
  static std::string names() {
    const char* all[] = {dtype_name(Ds)...};
    const size_t n = sizeof...(Ds);
    std::string s;
    for (size_t i = 0; i < n; ++i)
      s += std::string(i == 0 ? "" : i + 1 == n ? " or " : ", ") + all[i];
    return s;
  }
};
using F32Only = DTypes<DType::kF32>;
using FloatTypes = DTypes<DType::kF32, DType::kBF16, DType::kF16>;
using CacheTypes = DTypes<DType::kF32, DType::kBF16>;  // KV caches, linear weights

template <DType D>
using DTypeC = std::integral_constant<DType, D>;
template <Device D>
using DeviceC = std::integral_constant<Device, D>;
template <typename DeviceConstant>
inline constexpr bool is_cpu = DeviceConstant::value == Device::kCPU;

// One dtype axis: the tensor's dtype, what it is called in messages, and what the op accepts.
template <typename Allowed>
struct Axis {
  DType dtype;
  const char* name;
};

[[noreturn]] inline void unsupported_dtype(const char* op, const char* name, DType d,
                                           const std::string& allowed) {
  throw InvalidArgument(
      fastlm::detail::concat(op, ": ", name, " must be ", allowed, ", got ", dtype_name(d)));
}

// Calls f(DTypeC<d>{}) for the runtime dtype d if Allowed contains it, else throws.
template <typename Allowed, typename F>
decltype(auto) on_dtype(const char* op, Axis<Allowed> axis, F&& f) {
#define FASTLM_DTYPE_CASE(D)                                   \
  case D:                                                      \
    if constexpr (Allowed::contains(D)) return f(DTypeC<D>{}); \
    break;
  switch (axis.dtype) {
    FASTLM_DTYPE_CASE(DType::kF32)
    FASTLM_DTYPE_CASE(DType::kF16)
    FASTLM_DTYPE_CASE(DType::kBF16)
    FASTLM_DTYPE_CASE(DType::kI32)
    FASTLM_DTYPE_CASE(DType::kI64)
    FASTLM_DTYPE_CASE(DType::kU8)
  }
#undef FASTLM_DTYPE_CASE
  unsupported_dtype(op, axis.name, axis.dtype, Allowed::names());
}

// Calls f(DeviceC<ctx.device>{}).
template <typename F>
decltype(auto) on_device(const ExecContext& ctx, F&& f) {
  switch (ctx.device) {
    case Device::kCPU:
      return f(DeviceC<Device::kCPU>{});
    case Device::kCUDA:
      return f(DeviceC<Device::kCUDA>{});
  }
  throw Error("unknown device");
}

// The device has no kernel for this op in this build.
[[noreturn]] inline void no_kernel(Device device, const char* op) {
  throw InvalidArgument(
      fastlm::detail::concat(op, ": no ", device_name(device), " kernel in this build"));
}

// Every tensor of an op must be on the context's device.
inline void check_device(const ExecContext& ctx, const char* op,
                         std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts) {
    FASTLM_CHECK_ARG(t->device() == ctx.device, op, ": a ", device_name(t->device()),
                     " tensor given to an op running on ", device_name(ctx.device));
  }
}

// Device only.
template <typename F>
void dispatch(const ExecContext& ctx, const char* op, F&& f) {
  on_device(ctx, [&](auto device) { f(device); });
}

// Device x one dtype axis.
template <typename A, typename F>
void dispatch(const ExecContext& ctx, const char* op, Axis<A> a, F&& f) {
  on_device(ctx, [&](auto device) { on_dtype(op, a, [&](auto da) { f(device, da); }); });
}

// Device x activation dtype x weight dtype.
template <typename A, typename W, typename F>
void dispatch(const ExecContext& ctx, const char* op, Axis<A> act, Axis<W> weight, F&& f) {
  on_device(ctx, [&](auto device) {
    on_dtype(op, act, [&](auto da) { on_dtype(op, weight, [&](auto dw) { f(device, da, dw); }); });
  });
}

}  // namespace fastlm::ops::detail
