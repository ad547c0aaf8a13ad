#include "cpu/onednn_matmul.h"

#include <dnnl.hpp>
#include <map>
#include <mutex>
#include <unordered_map>

namespace fastlm::cpu {

namespace {

dnnl::engine& dnnl_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

const dnnl::matmul& cached_matmul(const MatmulKey& key) {
  static std::mutex mu;
  static std::map<MatmulKey, dnnl::matmul> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  if (cache.size() >= 4096) cache.clear();  // bounds memory if M keeps changing
  using dt = dnnl::memory::data_type;
  using tag = dnnl::memory::format_tag;
  const dt in_dt = key.bf16 ? dt::bf16 : dt::f32;
  const dnnl::memory::desc src({key.m, key.k}, in_dt, tag::ab);
  // w is [N,K] row-major, i.e. the KxN weights matrix in "ba" order: used in place.
  const dnnl::memory::desc wei({key.k, key.n}, in_dt, tag::ba);
  const dnnl::memory::desc dst({key.m, key.n}, key.y_bf16 ? dt::bf16 : dt::f32,
                               dnnl::memory::dims{key.ldy, 1});
  dnnl::primitive_attr attr;
  switch (key.act) {
    case Activation::kNone:
      break;
    case Activation::kGeluErf:
    case Activation::kGeluTanh: {
      dnnl::post_ops po;
      po.append_eltwise(key.act == Activation::kGeluErf ? dnnl::algorithm::eltwise_gelu_erf
                                                        : dnnl::algorithm::eltwise_gelu_tanh,
                        0.0f, 0.0f);
      attr.set_post_ops(po);
      break;
    }
  }
  const dnnl::matmul::primitive_desc pd =
      key.bias ? dnnl::matmul::primitive_desc(dnnl_engine(), src, wei,
                                              dnnl::memory::desc({1, key.n}, dt::f32, tag::ab), dst,
                                              attr)
               : dnnl::matmul::primitive_desc(dnnl_engine(), src, wei, dst, attr);
  return cache.emplace(key, dnnl::matmul(pd)).first->second;
}

}  // namespace

void onednn_matmul(const MatmulKey& key, const void* x, const void* w, const float* bias, void* y) {
  const dnnl::matmul& prim = cached_matmul(key);
  using dt = dnnl::memory::data_type;
  using tag = dnnl::memory::format_tag;
  const dt in_dt = key.bf16 ? dt::bf16 : dt::f32;
  dnnl::engine& eng = dnnl_engine();
  dnnl::memory src({{key.m, key.k}, in_dt, tag::ab}, eng, const_cast<void*>(x));
  dnnl::memory wei({{key.k, key.n}, in_dt, tag::ba}, eng, const_cast<void*>(w));
  dnnl::memory dst(
      {{key.m, key.n}, key.y_bf16 ? dt::bf16 : dt::f32, dnnl::memory::dims{key.ldy, 1}}, eng, y);
  std::unordered_map<int, dnnl::memory> args{
      {DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst}};
  if (key.bias) {
    args.emplace(DNNL_ARG_BIAS,
                 dnnl::memory({{1, key.n}, dt::f32, tag::ab}, eng, const_cast<float*>(bias)));
  }
  thread_local dnnl::stream stream(eng);
  prim.execute(stream, args);
  stream.wait();
}

}  // namespace fastlm::cpu
