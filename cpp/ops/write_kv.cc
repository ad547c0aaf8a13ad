#include "cpu/write_kv_cpu.h"
#include "ops/op_checks.h"
#include "ops/ops.h"

namespace fastlm::ops {

void write_kv(const Tensor& k, const Tensor& v, Tensor& k_cache, Tensor& v_cache,
              const int64_t* slot_mapping) {
  using namespace detail;
  check_dim("write_kv", "k", k, 2);
  check_dim("write_kv", "v", v, 2);
  check_dim("write_kv", "k_cache", k_cache, 4);
  check_dim("write_kv", "v_cache", v_cache, 4);
  check_dtype("write_kv", "k", k, DType::kF32);
  check_dtype("write_kv", "v", v, DType::kF32);
  FASTLM_CHECK_ARG(k.shape() == v.shape(), "write_kv: k ", k.shape_str(), " and v ", v.shape_str(),
                   " differ");
  FASTLM_CHECK_ARG(k_cache.shape() == v_cache.shape() && k_cache.dtype() == v_cache.dtype(),
                   "write_kv: k_cache and v_cache differ in shape or dtype");
  const int64_t t = k.size(0);
  const int64_t width = k_cache.size(2) * k_cache.size(3);
  FASTLM_CHECK_ARG(k.size(1) == width, "write_kv: k ", k.shape_str(),
                   " rows must hold Hk*D = ", width, " values for cache ", k_cache.shape_str());
  FASTLM_CHECK_ARG(t == 0 || slot_mapping != nullptr, "write_kv: slot_mapping is null");
  const int64_t num_slots = k_cache.size(0) * k_cache.size(1);
  for (int64_t i = 0; i < t; ++i) {
    FASTLM_CHECK_ARG(slot_mapping[i] < num_slots, "write_kv: slot ", slot_mapping[i],
                     " outside the cache of ", num_slots, " slots");
  }
  const float* kp = k.data<float>();
  const float* vp = v.data<float>();
  switch (common_device("write_kv", {&k, &v, &k_cache, &v_cache})) {
    case Device::kCPU:
      switch (k_cache.dtype()) {
        case DType::kF32:
          return cpu::write_kv<DType::kF32>(kp, vp, k_cache.data(), v_cache.data(), slot_mapping, t,
                                            width);
        case DType::kBF16:
          return cpu::write_kv<DType::kBF16>(kp, vp, k_cache.data(), v_cache.data(), slot_mapping,
                                             t, width);
        case DType::kF16:
        case DType::kI32:
        case DType::kI64:
        case DType::kU8:
          throw InvalidArgument(std::string("write_kv: cache must be float32 or bfloat16, got ") +
                                dtype_name(k_cache.dtype()));
      }
      break;
    case Device::kCUDA:
      no_cuda("write_kv");
  }
}

}  // namespace fastlm::ops
