// ModelRunner::pool: hidden states -> per-request pooled outputs (CLS / MEAN / LAST / ALL), the
// model's head for classifiers, then activation and L2 normalization.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/status.h"
#include "engine/model_runner.h"

namespace fastlm::engine {

namespace {

void apply_activation(float* row, int64_t n, sched::PoolingActivation act) {
  switch (act) {
    case sched::PoolingActivation::kNone:
      return;
    case sched::PoolingActivation::kSoftmax: {
      float mx = row[0];
      for (int64_t i = 1; i < n; ++i) mx = std::max(mx, row[i]);
      double sum = 0.0;
      for (int64_t i = 0; i < n; ++i) {
        row[i] = std::exp(row[i] - mx);
        sum += row[i];
      }
      for (int64_t i = 0; i < n; ++i) row[i] = static_cast<float>(row[i] / sum);
      return;
    }
    case sched::PoolingActivation::kSigmoid:
      for (int64_t i = 0; i < n; ++i) row[i] = 1.0f / (1.0f + std::exp(-row[i]));
      return;
  }
}

// As torch.nn.functional.normalize: x / max(||x||, 1e-12).
void l2_normalize(float* row, int64_t n) {
  double ss = 0.0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(row[i]) * row[i];
  const float inv = static_cast<float>(1.0 / std::max(std::sqrt(ss), 1e-12));
  for (int64_t i = 0; i < n; ++i) row[i] *= inv;
}

}  // namespace

void ModelRunner::pool(const sched::SchedulerOutput& out, const Tensor& hidden,
                       StepResult& result) {
  const int64_t H = hidden.size(1);
  const float* hs = hidden.data<float>();
  const model::ForwardBatch& b = input_.batch();
  std::vector<size_t> head_requests;  // scheduled indices whose pooled vector goes to the head
  for (size_t i = 0; i < out.scheduled.size(); ++i) {
    const sched::Request& r = *out.scheduled[i].request;
    FASTLM_ASSERT(r.is_pooling() && out.scheduled[i].samples);
    const sched::PoolingParams& p = *r.pooling;
    const int row = input_.row_of(i);
    const int64_t row0 = b.query_start_loc[row], row1 = b.query_start_loc[row + 1];
    PooledOutput& po = result.pooled[i];
    switch (p.type) {
      case sched::PoolingType::kCls:
        po.data.assign(hs + row0 * H, hs + (row0 + 1) * H);
        break;
      case sched::PoolingType::kLast:
        po.data.assign(hs + (row1 - 1) * H, hs + row1 * H);
        break;
      case sched::PoolingType::kMean: {
        std::vector<double> acc(H, 0.0);  // double: the mean of up to max_model_len rows
        for (int64_t r0 = row0; r0 < row1; ++r0)
          for (int64_t k = 0; k < H; ++k) acc[k] += hs[r0 * H + k];
        po.data.resize(H);
        for (int64_t k = 0; k < H; ++k) po.data[k] = static_cast<float>(acc[k] / (row1 - row0));
        break;
      }
      case sched::PoolingType::kAll:
        po.data.assign(hs + row0 * H, hs + row1 * H);
        break;
    }
    po.shape = p.type == sched::PoolingType::kAll ? std::vector<int64_t>{row1 - row0, H}
                                                  : std::vector<int64_t>{H};
    if (p.use_head) head_requests.push_back(i);
  }
  if (!head_requests.empty()) {
    const int64_t n = static_cast<int64_t>(head_requests.size());
    Tensor pooled = Tensor::empty({n, H}, DType::kF32);
    for (int64_t k = 0; k < n; ++k) {
      std::memcpy(pooled.data<float>() + k * H, result.pooled[head_requests[k]].data.data(),
                  H * sizeof(float));
    }
    Tensor logits = model_.classify(pooled);
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
    for (int64_t r = 0; r < rows; ++r) {
      apply_activation(po.data.data() + r * width, width, p.activation);
      if (p.normalize) l2_normalize(po.data.data() + r * width, width);
    }
  }
}

}  // namespace fastlm::engine
