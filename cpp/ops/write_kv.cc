#include "cpu/write_kv_cpu.h"
#include "ops/dispatch.h"
#include "ops/op_checks.h"
#include "ops/ops.h"

namespace fastlm::ops {

void write_kv(ExecContext& ctx, const Tensor& k, const Tensor& v, Tensor& k_cache, Tensor& v_cache,
              const Tensor& slot_mapping) {
  using namespace detail;
  const char* op = "write_kv";
  check_dim(op, "k", k, 2);
  check_tensor(op, "v", v, 2, k.dtype());
  check_dim(op, "k_cache", k_cache, 4);
  check_dim(op, "v_cache", v_cache, 4);
  check_tensor(op, "slot_mapping", slot_mapping, 1, DType::kI64);
  FASTLM_CHECK_ARG(k.shape() == v.shape(), "write_kv: k ", k.shape_str(), " and v ", v.shape_str(),
                   " differ");
  FASTLM_CHECK_ARG(k_cache.shape() == v_cache.shape() && k_cache.dtype() == v_cache.dtype(),
                   "write_kv: k_cache and v_cache differ in shape or dtype");
  const int64_t t = k.size(0);
  const int64_t width = k_cache.size(2) * k_cache.size(3);
  FASTLM_CHECK_ARG(k.size(1) == width, "write_kv: k ", k.shape_str(),
                   " rows must hold Hk*D = ", width, " values for cache ", k_cache.shape_str());
  FASTLM_CHECK_ARG(slot_mapping.size(0) == t, "write_kv: slot_mapping ", slot_mapping.shape_str(),
                   " must have one slot per token (", t, ")");
  check_device(ctx, op, {&k, &v, &k_cache, &v_cache, &slot_mapping});
  dispatch(ctx, op, Axis<F32Only>{k.dtype(), "k"}, Axis<CacheTypes>{k_cache.dtype(), "cache"},
           [&](auto device, auto, auto ct) {
             if constexpr (is_cpu<decltype(device)>) {
               cpu::write_kv<decltype(ct)::value>(k.data<float>(), v.data<float>(), k_cache.data(),
                                                  v_cache.data(), slot_mapping.data<int64_t>(), t,
                                                  width);
             } else {
               no_kernel(device, op);
             }
           });
}

}  // namespace fastlm::ops
