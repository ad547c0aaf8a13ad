#pragma once
// Whisper's timestamp rules (OpenAI's ApplyTimestampRules; transformers'
// WhisperTimeStampLogitsProcessor), applied to one row of logits after the suppress-token bans.
// Token layout of every Whisper vocabulary: text < eot <= specials < timestamp_begin, where
// timestamp_begin - 1 is <|notimestamps|> and timestamp_begin + i is <|i * 0.02|>.
#include <cstdint>
#include <vector>

namespace fastlm::model {

// `output`: the tokens generated after the decoder prompt; `timestamp_begin` <= 0 leaves the row
// alone. Bans, in the row:
// - <|notimestamps|>;
// - after a lone timestamp (a segment's end still unpaired): text, so a timestamp or EOT follows;
//   after a pair: timestamps, so text follows;
// - timestamps below the last one (strictly below after a pair's second half) — monotonic;
// - at the first step: every text token, and timestamps beyond <|max_initial_index * 0.02|>
//   (OpenAI's 1.0 s: 50; < 0: no limit);
// - every text token when the timestamps' total probability beats the best text token's.
void apply_whisper_timestamp_rules(float* row, int vocab, const std::vector<int32_t>& output,
                                   int32_t timestamp_begin, int32_t eot, int32_t max_initial_index);

}  // namespace fastlm::model
