// Whisper's timestamp rules on hand-made logits: a vocabulary of 10 text tokens, EOT at 10,
// <|notimestamps|> at 11 and timestamps 12..19 (<|0.00|> .. <|0.14|>).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "model/whisper_timestamps.h"

namespace fastlm::model {
namespace {

constexpr int kVocab = 20, kEot = 10, kBegin = 12;

// Which tokens survive the rules over a flat row (with `boost` raised above the rest).
std::vector<int> allowed(const std::vector<int32_t>& output, int max_initial = 50,
                         std::vector<std::pair<int, float>> boost = {}) {
  std::vector<float> row(kVocab, 0.0f);
  for (auto [t, v] : boost) row[t] = v;
  apply_whisper_timestamp_rules(row.data(), kVocab, output, kBegin, kEot, max_initial);
  std::vector<int> out;
  for (int i = 0; i < kVocab; ++i)
    if (std::isfinite(row[i])) out.push_back(i);
  return out;
}

std::vector<int> range(int a, int b) {
  std::vector<int> v;
  for (int i = a; i < b; ++i) v.push_back(i);
  return v;
}

TEST(WhisperTimestamps, FirstTokenIsAnEarlyTimestamp) {
  EXPECT_EQ(allowed({}), range(kBegin, kVocab));         // no text, no <|notimestamps|>
  EXPECT_EQ(allowed({}, 2), range(kBegin, kBegin + 3));  // <= <|0.04|>
}

TEST(WhisperTimestamps, TextFollowsAnOpeningTimestamp) {
  // Timestamps banned; text, EOT and the other specials but <|notimestamps|> stay.
  EXPECT_EQ(allowed({13}), range(0, kBegin - 1));
}

TEST(WhisperTimestamps, AClosingTimestampIsMonotonicAndNonEmpty) {
  // After <|0.02|> text: text goes on, or a timestamp > 0.02 closes the segment.
  std::vector<int> want = range(0, kBegin - 1);
  for (int t : range(14, kVocab)) want.push_back(t);
  // A flat row gives the 6 timestamps more mass than any one text token: text is banned then.
  EXPECT_EQ(allowed({13, 3}, 50, {{3, 4.0f}}), want);
  EXPECT_EQ(allowed({13, 3}), range(14, kVocab));
}

TEST(WhisperTimestamps, AfterAClosingTimestampComesAnOpeningOneOrEot) {
  // <|0.02|> a <|0.06|>: text banned (below EOT); the next timestamp may repeat 0.06.
  std::vector<int> want{kEot};
  for (int t : range(kBegin + 4, kVocab)) want.push_back(t);
  EXPECT_EQ(allowed({13, 3, 16}, 50, {{kEot, 3.0f}}), want);
  // EOT too goes when the timestamps outweigh it.
  EXPECT_EQ(allowed({13, 3, 16}), range(kBegin + 4, kVocab));
}

TEST(WhisperTimestamps, AfterAPairComesText) {
  // <|0.02|> a <|0.06|> <|0.06|>: timestamps banned, text free (it outweighs them now).
  EXPECT_EQ(allowed({13, 3, 16, 16}), range(0, kBegin - 1));
}

TEST(WhisperTimestamps, OffLeavesTheRowAlone) {
  std::vector<float> row(kVocab, 1.0f);
  apply_whisper_timestamp_rules(row.data(), kVocab, {}, -1, kEot, 50);
  for (float v : row) EXPECT_EQ(v, 1.0f);
}

}  // namespace
}  // namespace fastlm::model
