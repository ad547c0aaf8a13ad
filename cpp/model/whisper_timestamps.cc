#include "model/whisper_timestamps.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace fastlm::model {

void apply_whisper_timestamp_rules(float* row, int vocab, const std::vector<int32_t>& output,
                                   int32_t timestamp_begin, int32_t eot,
                                   int32_t max_initial_index) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const int32_t tb = timestamp_begin;
  if (tb <= 0 || tb > vocab) return;
  row[tb - 1] = kNegInf;  // <|notimestamps|>
  const size_t n = output.size();
  const bool last_ts = n >= 1 && output[n - 1] >= tb;
  const bool penultimate_ts = n < 2 || output[n - 2] >= tb;
  if (last_ts) {
    if (penultimate_ts) {
      std::fill(row + tb, row + vocab, kNegInf);
    } else {
      std::fill(row, row + std::clamp(eot, 0, vocab), kNegInf);
    }
  }
  for (size_t i = n; i-- > 0;) {
    if (output[i] < tb) continue;
    // Right after a segment's closing timestamp the next segment may start at the same time.
    const int32_t floor = last_ts && !penultimate_ts ? output[i] : output[i] + 1;
    std::fill(row + tb, row + std::clamp(floor, tb, vocab), kNegInf);
    break;
  }
  if (n == 0) {
    std::fill(row, row + tb, kNegInf);
    if (max_initial_index >= 0) {
      const int64_t last_allowed = static_cast<int64_t>(tb) + max_initial_index;
      if (last_allowed + 1 < vocab) std::fill(row + last_allowed + 1, row + vocab, kNegInf);
    }
  }
  // Timestamp mass vs the best text token, both as log-probabilities over the whole row (the
  // shared log-sum-exp cancels, so compare log-sum-exp(timestamps) with max(text)).
  float max_text = kNegInf, max_ts = kNegInf;
  for (int i = 0; i < tb; ++i) max_text = std::max(max_text, row[i]);
  for (int i = tb; i < vocab; ++i) max_ts = std::max(max_ts, row[i]);
  if (max_ts == kNegInf || max_text == kNegInf) return;
  double sum = 0.0;
  for (int i = tb; i < vocab; ++i) sum += std::exp(static_cast<double>(row[i] - max_ts));
  const double ts_logsumexp = static_cast<double>(max_ts) + std::log(sum);
  if (ts_logsumexp > static_cast<double>(max_text)) std::fill(row, row + tb, kNegInf);
}

}  // namespace fastlm::model
