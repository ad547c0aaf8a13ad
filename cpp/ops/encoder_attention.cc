#include "cpu/encoder_attention_cpu.h"
#include "ops/op_checks.h"
#include "ops/ops.h"

namespace fastlm::ops {

void encoder_attention(const Tensor& qkv, const int32_t* query_start_loc, int num_seqs,
                       int num_heads, int head_dim, float scale, Tensor& out) {
  using namespace detail;
  check_dim("encoder_attention", "qkv", qkv, 2);
  check_dim("encoder_attention", "out", out, 2);
  check_dtype("encoder_attention", "qkv", qkv, DType::kF32);
  check_dtype("encoder_attention", "out", out, DType::kF32);
  FASTLM_CHECK_ARG(num_seqs > 0 && num_heads > 0 && head_dim > 0,
                   "encoder_attention: num_seqs, num_heads and head_dim must be positive");
  const int64_t hd = static_cast<int64_t>(num_heads) * head_dim;
  FASTLM_CHECK_ARG(qkv.size(1) == 3 * hd, "encoder_attention: qkv ", qkv.shape_str(),
                   " must have 3 * num_heads * head_dim = ", 3 * hd, " columns");
  FASTLM_CHECK_ARG(out.size(0) == qkv.size(0) && out.size(1) == hd, "encoder_attention: out ",
                   out.shape_str(), " must be [", qkv.size(0), ", ", hd, "]");
  FASTLM_CHECK_ARG(query_start_loc != nullptr && query_start_loc[0] == 0 &&
                       query_start_loc[num_seqs] == qkv.size(0),
                   "encoder_attention: query_start_loc must run from 0 to ", qkv.size(0));
  for (int s = 0; s < num_seqs; ++s) {
    FASTLM_CHECK_ARG(query_start_loc[s + 1] >= query_start_loc[s],
                     "encoder_attention: query_start_loc must be non-decreasing");
  }
  switch (common_device("encoder_attention", {&qkv, &out})) {
    case Device::kCPU:
      return cpu::encoder_attention(qkv.data<float>(), query_start_loc, num_seqs, num_heads,
                                    head_dim, scale, out.data<float>());
    case Device::kCUDA:
      no_cuda("encoder_attention");
  }
}

}  // namespace fastlm::ops
