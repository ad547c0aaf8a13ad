#include "engine/input_batch.h"

#include <algorithm>

#include "core/status.h"

namespace fastlm::engine {

InputBatch::InputBatch(int block_size, int max_num_batched_tokens, int max_num_seqs,
                       int max_model_len)
    : block_size_(block_size) {
  FASTLM_ASSERT(block_size > 0 && max_num_batched_tokens > 0 && max_num_seqs > 0);
  builder_.reserve(max_num_batched_tokens, max_num_seqs,
                   std::max(1, (max_model_len + block_size - 1) / block_size));
}

model::ForwardBatch& InputBatch::update(const sched::SchedulerOutput& out,
                                        const RequestStates& states) {
  const int n = static_cast<int>(out.scheduled.size());
  sched_of_key_.clear();
  for (int i = 0; i < n; ++i) sched_of_key_[out.scheduled[i].request->arrival_seq] = i;

  // 1. Rows whose request is still scheduled (and not recomputed since) stay, moved up.
  row_of_sched_.assign(n, -1);
  int kept = 0;
  const int old_rows = num_rows();
  for (int r = 0; r < old_rows; ++r) {
    auto it = sched_of_key_.find(rows_[r].arrival_seq);
    if (it == sched_of_key_.end() ||
        out.scheduled[it->second].request->num_preemptions != rows_[r].num_preemptions) {
      builder_.set_blocks(r, nullptr, 0);
      continue;
    }
    if (r != kept) {
      builder_.move_row(r, kept);
      rows_[kept] = rows_[r];
    }
    row_of_sched_[it->second] = kept++;
  }
  rows_.resize(kept);

  // 2. New rows take their whole table; kept rows append the blocks allocated since.
  for (int i = 0; i < n; ++i) {
    const sched::ScheduledRequest& s = out.scheduled[i];
    const std::vector<int32_t>& table = *s.block_table;
    const int size = static_cast<int>(table.size());
    int& row = row_of_sched_[i];
    if (row < 0) {
      row = num_rows();
      rows_.push_back({s.request->arrival_seq, s.request->num_preemptions,
                       states.at(s.request->request_id).rng});
      builder_.set_blocks(row, table.data(), size);
      continue;
    }
    const int have = builder_.num_blocks(row);
    // Tables only grow while a request runs (blocks are freed only by preemption or finish).
    FASTLM_ASSERT(have <= size && (have == 0 || builder_.blocks(row)[have - 1] == table[have - 1]));
    if (have < size) builder_.append_blocks(row, table.data() + have, size - have);
  }
  sched_of_row_.assign(n, -1);
  for (int i = 0; i < n; ++i) sched_of_row_[row_of_sched_[i]] = i;

  // 3. The step's tokens, in row order.
  bool any_token_types = false;
  for (const sched::ScheduledRequest& s : out.scheduled) {
    any_token_types |= s.request->is_pooling() && s.request->pooling->token_type_boundary >= 0;
  }
  builder_.begin(block_size_, any_token_types);
  model::ForwardBatch& b = builder_.batch();
  sample_sched_.clear();
  prompt_rows_.clear();
  std::vector<int> first_token(n);
  for (int row = 0; row < n; ++row) {
    const int i = sched_of_row_[row];
    const sched::ScheduledRequest& s = out.scheduled[i];
    const sched::Request& r = *s.request;
    const int start = s.num_computed_before;
    first_token[row] =
        builder_.add_sequence([&r](int pos) { return r.token_at(pos); }, start, s.num_tokens,
                              r.is_pooling() ? r.pooling->token_type_boundary : -1);
    if (r.has_encoder()) {
      b.num_encoder_slots = r.num_encoder_tokens;
      b.encoder_inputs.push_back(start == 0 ? states.at(r.request_id).encoder_input.data()
                                            : nullptr);
    } else {
      b.encoder_inputs.push_back(nullptr);
    }
    if (s.samples && !r.is_pooling()) {
      sample_sched_.push_back(i);
      builder_.add_logits_row(first_token[row] + s.num_tokens - 1);
    }
  }
  // 4. Prompt-logprob rows after all sampling rows.
  for (int row = 0; row < n; ++row) {
    const int i = sched_of_row_[row];
    const sched::ScheduledRequest& s = out.scheduled[i];
    const sched::Request& r = *s.request;
    if (r.params.prompt_logprobs < 0) continue;
    const int start = s.num_computed_before;
    // Positions whose next token is a prompt token, not yet scored.
    const int scored = static_cast<int>(states.at(r.request_id).prompt_logprobs.size());
    const int first = std::max(start, scored);
    const int last = std::min(start + s.num_tokens, r.num_prompt_tokens() - 1);
    if (first >= last) continue;
    prompt_rows_.push_back({static_cast<size_t>(i), first, last - first, builder_.num_logits()});
    for (int p = first; p < last; ++p) builder_.add_logits_row(first_token[row] + (p - start));
  }
  return builder_.finish();
}

SamplingBatch& InputBatch::sampling(const sched::SchedulerOutput& out, const RequestStates& states,
                                    int vocab, const std::vector<int32_t>& eos_ids) {
  sampling_.begin(vocab, &eos_ids);
  for (const int i : sample_sched_) {
    const sched::Request& r = *out.scheduled[i].request;
    const RequestState& st = states.at(r.request_id);
    const std::vector<int32_t>* prompt = r.has_encoder() ? &st.decoder_prompt : &r.prompt_token_ids;
    sampling_.add({&r.params, prompt, &r.output_token_ids, &rows_[row_of_sched_[i]].rng});
  }
  return sampling_;
}

void InputBatch::commit_sampling(const sched::SchedulerOutput& out, RequestStates& states) {
  for (size_t k = 0; k < sample_sched_.size(); ++k) {
    const int i = sample_sched_[k];
    const RandomState rng = sampling_.rng(static_cast<int>(k));
    rows_[row_of_sched_[i]].rng = rng;
    states.at(out.scheduled[i].request->request_id).rng = rng;
  }
}

}  // namespace fastlm::engine
