// ModelRunner::pool: hidden states -> per-request pooled outputs (CLS / MEAN / LAST through
// ops::pool, ALL as the request's rows), the model's head for classifiers, then activation and
// L2 normalization (ops::pool_finish).
#include <algorithm>
#include <cstring>

#include "core/status.h"
#include "engine/model_runner.h"
#include "ops/backend.h"
#include "ops/pool.h"

namespace fastlm::engine {

namespace {

ops::PoolMethod method_of(sched::PoolingType type) {
  switch (type) {
    case sched::PoolingType::kCls:
      return ops::PoolMethod::kCls;
    case sched::PoolingType::kMean:
      return ops::PoolMethod::kMean;
    case sched::PoolingType::kLast:
    case sched::PoolingType::kAll:  // not pooled by the op; any method serves as a placeholder
      return ops::PoolMethod::kLast;
  }
  return ops::PoolMethod::kCls;
}

ops::PoolActivation activation_of(sched::PoolingActivation act) {
  switch (act) {
    case sched::PoolingActivation::kNone:
      return ops::PoolActivation::kNone;
    case sched::PoolingActivation::kSoftmax:
      return ops::PoolActivation::kSoftmax;
    case sched::PoolingActivation::kSigmoid:
      return ops::PoolActivation::kSigmoid;
  }
  return ops::PoolActivation::kNone;
}

}  // namespace

void ModelRunner::pool(const sched::SchedulerOutput& out, const Tensor& hidden,
                       StepResult& result) {
  ExecContext& cx = model_.ctx();
  const int64_t H = hidden.size(1);
  const model::ForwardBatch& b = input_.batch();
  const int S = b.num_seqs();
  // One pooled row per sequence, in row order (the hidden states' order).
  std::vector<int32_t> methods(S);
  for (size_t i = 0; i < out.scheduled.size(); ++i) {
    const sched::Request& r = *out.scheduled[i].request;
    FASTLM_ASSERT(r.is_pooling() && out.scheduled[i].samples);
    methods[input_.row_of(i)] = static_cast<int32_t>(method_of(r.pooling->type));
  }
  Tensor pooled = Tensor::empty({S, H}, DType::kF32, hidden.device());
  ops::pool(cx, hidden, host_view(b.query_start_loc), host_view(methods), pooled);
  const Tensor host_pooled =
      pooled.device() == Device::kCPU ? pooled : pooled.copy_to(Device::kCPU, cx.stream);

  std::vector<size_t> head_requests;  // scheduled indices whose pooled vector goes to the head
  for (size_t i = 0; i < out.scheduled.size(); ++i) {
    const sched::PoolingParams& p = *out.scheduled[i].request->pooling;
    const int row = input_.row_of(i);
    PooledOutput& po = result.pooled[i];
    if (p.type == sched::PoolingType::kAll) {
      const int64_t row0 = b.query_start_loc[row], row1 = b.query_start_loc[row + 1];
      const Tensor rows = hidden.slice_rows(row0, row1);
      const Tensor host_rows =
          rows.device() == Device::kCPU ? rows : rows.copy_to(Device::kCPU, cx.stream);
      po.data.assign(host_rows.data<float>(), host_rows.data<float>() + (row1 - row0) * H);
      po.shape = {row1 - row0, H};
    } else {
      po.data.assign(host_pooled.data<float>() + row * H,
                     host_pooled.data<float>() + (row + 1) * H);
      po.shape = {H};
    }
    if (p.use_head) head_requests.push_back(i);
  }
  if (!head_requests.empty()) {
    const int64_t n = static_cast<int64_t>(head_requests.size());
    Tensor rows = Tensor::empty({n, H}, DType::kF32);
    for (int64_t k = 0; k < n; ++k) {
      std::memcpy(rows.data<float>() + k * H, result.pooled[head_requests[k]].data.data(),
                  H * sizeof(float));
    }
    Tensor logits = model_.classify(rows);
    const int64_t L = logits.size(1);
    for (int64_t k = 0; k < n; ++k) {
      PooledOutput& po = result.pooled[head_requests[k]];
      po.data.assign(logits.data<float>() + k * L, logits.data<float>() + (k + 1) * L);
      po.shape = {L};
    }
  }
  for (size_t i = 0; i < out.scheduled.size(); ++i) {
    const sched::PoolingParams& p = *out.scheduled[i].request->pooling;
    PooledOutput& po = result.pooled[i];
    const int64_t width = po.shape.back();
    const int64_t rows = static_cast<int64_t>(po.data.size()) / width;
    if (p.activation == sched::PoolingActivation::kNone && !p.normalize) continue;
    const std::vector<int32_t> acts(rows, static_cast<int32_t>(activation_of(p.activation)));
    const std::vector<int32_t> norms(rows, p.normalize ? 1 : 0);
    Tensor x = Tensor::view(po.data.data(), {rows, width}, DType::kF32);
    ops::pool_finish(ops::default_context(Device::kCPU), x, host_view(acts), host_view(norms));
  }
}

}  // namespace fastlm::engine
