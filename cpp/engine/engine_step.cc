// Engine::step: one scheduler step on the engine thread (inbox -> schedule -> ModelRunner ->
// stop checks -> output deltas).
#include <deque>

#include "core/status.h"
#include "engine/engine.h"

namespace fastlm::engine {

std::vector<RequestOutputDelta> Engine::step() {
  std::lock_guard<std::mutex> lk(step_mu_);
  return step_locked();
}

std::vector<RequestOutputDelta> Engine::step_locked() {
  std::deque<NewRequest> added;
  std::vector<std::string> aborts;
  {
    std::lock_guard<std::mutex> lk(inbox_mu_);
    added.swap(inbox_);
    aborts.swap(inbox_aborts_);
  }
  std::vector<RequestOutputDelta> deltas;
  std::vector<std::string> finished_ids;
  for (NewRequest& nr : added) {
    const std::string id = nr.request->request_id;
    RequestState st;
    st.rng = sampler_->make_rng(nr.request->params.seed);
    st.encoder_input = std::move(nr.encoder_input);
    st.decoder_prompt = std::move(nr.decoder_prompt);
    states_[id] = std::move(st);
    scheduler_->add_request(std::move(nr.request));
  }
  // Blocks are freed now; the scheduler reports the abort in this step's update.
  for (const std::string& id : aborts) scheduler_->abort_request(id);

  sched::SchedulerOutput out = scheduler_->schedule();
  StepResult result = runner_->execute(out, states_);
  if (config_.fault_after_steps >= 0 && counters_.num_steps >= config_.fault_after_steps) {
    throw Error("injected fault (EngineConfig::fault_after_steps = " +
                std::to_string(config_.fault_after_steps) + ")");
  }
  counters_.num_steps++;
  // Requests whose grammar mask did not come: aborted before their token is recorded.
  std::unordered_map<std::string, std::string> errors;
  for (size_t i = 0; i < out.scheduled.size(); ++i) {
    if (result.errors[i].empty()) continue;
    const std::string& id = out.scheduled[i].request->request_id;
    errors[id] = result.errors[i];
    scheduler_->abort_request(id);
  }
  for (const sched::ScheduledRequest& s : out.scheduled) {
    const int num_prompt = s.request->num_prompt_tokens();
    const int end = s.num_computed_before + s.num_tokens;
    counters_.prompt_tokens += std::max(0, std::min(end, num_prompt) - s.num_computed_before);
  }
  // Logprobs by request id, before update_from_output may finish (and free) requests.
  std::unordered_map<std::string, size_t> index;
  for (size_t i = 0; i < out.scheduled.size(); ++i) {
    index[out.scheduled[i].request->request_id] = i;
    counters_.generation_tokens += static_cast<int64_t>(result.sampled[i].size());
  }
  // Prompt sizes and prompt-logprob completion, also read before requests are freed.
  struct Info {
    int num_prompt;
    bool prompt_done;
  };
  std::unordered_map<std::string, Info> info;
  for (const sched::ScheduledRequest& s : out.scheduled) {
    const sched::Request& r = *s.request;
    info[r.request_id] = {r.num_prompt_tokens(),
                          s.num_computed_before + s.num_tokens >= r.num_prompt_tokens()};
  }

  std::vector<sched::RequestDelta> updates = scheduler_->update_from_output(out, result.sampled);
  for (sched::RequestDelta& u : updates) {
    RequestOutputDelta d;
    d.request_id = u.request_id;
    d.new_token_ids = std::move(u.new_token_ids);
    d.num_cached_tokens = u.num_cached_tokens;
    auto it = index.find(u.request_id);
    if (it != index.end()) d.logprobs = std::move(result.logprobs[it->second]);
    auto inf = info.find(u.request_id);
    if (inf != info.end()) d.num_prompt_tokens = inf->second.num_prompt;
    if (it != index.end() && !result.pooled[it->second].shape.empty()) {
      d.pooled = std::move(result.pooled[it->second].data);
      d.pooled_shape = std::move(result.pooled[it->second].shape);
    }
    auto st = states_.find(u.request_id);
    if (st != states_.end() && inf != info.end() && inf->second.prompt_done &&
        !st->second.prompt_logprobs_delivered && !st->second.prompt_logprobs.empty()) {
      d.prompt_logprobs = std::move(st->second.prompt_logprobs);
      st->second.prompt_logprobs_delivered = true;
    }
    auto err = errors.find(u.request_id);
    if (err != errors.end()) d.error = err->second;
    if (u.finish_reason) {
      d.finished = true;
      d.finish_reason = finish_reason_name(*u.finish_reason);
      d.stop_token = u.stop_token;
      finished_ids.push_back(u.request_id);
    }
    deltas.push_back(std::move(d));
  }
  if (!finished_ids.empty()) {
    std::lock_guard<std::mutex> lk(inbox_mu_);
    for (const std::string& id : finished_ids) {
      live_ids_.erase(id);
      states_.erase(id);
      bitmasks_.erase(id);
    }
  }
  publish_stats();
  return deltas;
}

}  // namespace fastlm::engine
