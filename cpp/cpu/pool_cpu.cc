#include "cpu/pool_cpu.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/status.h"

namespace fastlm::cpu {

void pool(const float* hidden, int64_t h, const int32_t* qsl, const int32_t* methods,
          int64_t num_seqs, float* out) {
#pragma omp parallel for schedule(dynamic) if (num_seqs > 1)
  for (int64_t s = 0; s < num_seqs; ++s) {
    const int64_t row0 = qsl[s], row1 = qsl[s + 1];
    float* dst = out + s * h;
    switch (methods[s]) {
      case 0:  // CLS
        std::copy(hidden + row0 * h, hidden + (row0 + 1) * h, dst);
        break;
      case 2:  // LAST
        std::copy(hidden + (row1 - 1) * h, hidden + row1 * h, dst);
        break;
      default: {  // MEAN (the op entry point admits 0..2 only); double: up to max_model_len rows
        std::vector<double> acc(h, 0.0);
        for (int64_t r = row0; r < row1; ++r)
          for (int64_t k = 0; k < h; ++k) acc[k] += hidden[r * h + k];
        for (int64_t k = 0; k < h; ++k) dst[k] = static_cast<float>(acc[k] / (row1 - row0));
      }
    }
  }
}

void pool_finish(float* x, int64_t rows, int64_t w, const int32_t* activations,
                 const int32_t* normalize) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = x + r * w;
    if (activations[r] == 1) {  // softmax
      float mx = row[0];
      for (int64_t i = 1; i < w; ++i) mx = std::max(mx, row[i]);
      double sum = 0.0;
      for (int64_t i = 0; i < w; ++i) {
        row[i] = std::exp(row[i] - mx);
        sum += row[i];
      }
      for (int64_t i = 0; i < w; ++i) row[i] = static_cast<float>(row[i] / sum);
    } else if (activations[r] == 2) {  // sigmoid
      for (int64_t i = 0; i < w; ++i) row[i] = 1.0f / (1.0f + std::exp(-row[i]));
    }
    if (normalize[r] != 0) {  // as torch.nn.functional.normalize: x / max(||x||, 1e-12)
      double ss = 0.0;
      for (int64_t i = 0; i < w; ++i) ss += static_cast<double>(row[i]) * row[i];
      const float inv = static_cast<float>(1.0 / std::max(std::sqrt(ss), 1e-12));
      for (int64_t i = 0; i < w; ++i) row[i] *= inv;
    }
  }
}

}  // namespace fastlm::cpu
