#include "cpu/rope_cpu.h"
#include "ops/op_checks.h"
#include "ops/ops.h"

namespace fastlm::ops {

void rope(Tensor& q, Tensor& k, const int32_t* positions, const Tensor& cos_sin, int head_dim) {
  using namespace detail;
  check_dim("rope", "q", q, 2);
  check_dim("rope", "k", k, 2);
  check_dim("rope", "cos_sin", cos_sin, 2);
  check_dtype("rope", "q", q, DType::kF32);
  check_dtype("rope", "k", k, DType::kF32);
  check_dtype("rope", "cos_sin", cos_sin, DType::kF32);
  const int64_t t = q.size(0);
  FASTLM_CHECK_ARG(k.size(0) == t, "rope: q ", q.shape_str(), " and k ", k.shape_str(),
                   " disagree on the token count");
  FASTLM_CHECK_ARG(head_dim > 0 && q.size(1) % head_dim == 0 && k.size(1) % head_dim == 0,
                   "rope: q ", q.shape_str(), " / k ", k.shape_str(), " are not whole heads of ",
                   head_dim);
  // cos_sin may cover fewer dims than head_dim (partial rotary); those dims rotate, the rest
  // pass through.
  const int64_t rot = cos_sin.size(1);
  FASTLM_CHECK_ARG(rot > 0 && rot % 2 == 0 && rot <= head_dim, "rope: cos_sin ",
                   cos_sin.shape_str(), " must have an even width <= head_dim ", head_dim);
  FASTLM_CHECK_ARG(t == 0 || positions != nullptr, "rope: positions is null");
  const int64_t max_pos = cos_sin.size(0);
  for (int64_t i = 0; i < t; ++i) {
    FASTLM_CHECK_ARG(positions[i] >= 0 && positions[i] < max_pos, "rope: position ", positions[i],
                     " outside the cos/sin cache of ", max_pos, " positions");
  }
  switch (common_device("rope", {&q, &k, &cos_sin})) {
    case Device::kCPU:
      cpu::rope(q.data<float>(), t, q.size(1) / head_dim, head_dim, positions,
                cos_sin.data<float>(), rot);
      cpu::rope(k.data<float>(), t, k.size(1) / head_dim, head_dim, positions,
                cos_sin.data<float>(), rot);
      return;
    case Device::kCUDA:
      no_cuda("rope");
  }
}

}  // namespace fastlm::ops
