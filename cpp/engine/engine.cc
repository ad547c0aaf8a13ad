#include "engine/engine.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <sstream>

#include "core/status.h"
#include "ops/backend.h"
#include "sched/block_hash.h"

namespace fastlm::engine {

namespace {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

Engine::Engine(EngineConfig config) : config_(std::move(config)) {
  model::LoadOptions load;
  load.dtype = config_.dtype;
  load.runner = config_.runner;
  load.quantization = config_.quantization;
  const double load_start = now_seconds();
  model_ = model::load_model(config_.model, load);
  load_seconds_ = now_seconds() - load_start;
  const model::ModelConfig& mc = model_->config();
  const bool pooling = model_->is_pooling();

  max_model_len_ = config_.max_model_len > 0 ? config_.max_model_len : mc.max_position_embeddings;
  FASTLM_CHECK_ARG(max_model_len_ > 0, "max_model_len must be positive");
  FASTLM_CHECK_ARG(config_.block_size > 0 && config_.block_size <= 1024,
                   "block_size must be in [1, 1024], got ", config_.block_size);
  if (model_->encoder_len() > 0) {
    // Encoder-decoder: each request's first slots hold its cross-attention K/V (whole blocks);
    // max_model_len bounds its decoder tokens (at most the learned positions) after them.
    const int bs = config_.block_size;
    encoder_slots_ = (model_->encoder_len() + bs - 1) / bs * bs;
    max_model_len_ = encoder_slots_ + std::min(max_model_len_, mc.max_position_embeddings);
  }

  // Pooling prompts run whole in one step (encoders attend within the batch only).
  int max_batched = config_.max_num_batched_tokens > 0 ? config_.max_num_batched_tokens : 2048;
  if (encoder_slots_ > 0) {
    // Encoder work counts against the budget: by default 4 encoders fit in one step.
    if (config_.max_num_batched_tokens <= 0) max_batched = 4 * max_model_len_;
    FASTLM_CHECK_ARG(max_batched >= max_model_len_, "max_num_batched_tokens (", max_batched,
                     ") must be at least max_model_len (", max_model_len_,
                     ") for an encoder-decoder model: its encoder runs whole in one step");
  }
  if (pooling) {
    if (config_.max_num_batched_tokens <= 0) max_batched = std::max(2048, max_model_len_);
    FASTLM_CHECK_ARG(max_batched >= max_model_len_, "max_num_batched_tokens (", max_batched,
                     ") must be at least max_model_len (", max_model_len_,
                     ") for a pooling model: its prompts are never chunked");
  }

  // Scratch for one step's tokens and the RoPE table, once: forward never allocates them.
  model_->plan(max_batched, max_model_len_);

  const DType kv_dtype = model_->compute_dtype();
  const size_t per_block = model::KvStorage::bytes_per_block(
      mc.num_hidden_layers, config_.block_size, mc.num_key_value_heads, mc.head_dim, kv_dtype);
  int64_t budget = config_.kv_cache_memory;
  if (!model_->uses_kv_cache()) {
    // Encoders: blocks are bookkeeping only (no memory). Every request finishes in the step
    // that admits it, so one step's worth of tokens (rounded up per sequence) is enough.
    budget = 0;
  } else if (budget <= 0) {
    // The backend knows its memory and its cap (CPU: a fraction of MemAvailable, <= 4 GiB).
    budget = ops::backend(load.device).kv_cache_budget({0, config_.kv_cache_fraction});
  }
  num_blocks_ = static_cast<int>(budget / static_cast<int64_t>(per_block));
  const int blocks_for_one = (max_model_len_ + config_.block_size - 1) / config_.block_size;
  if (!model_->uses_kv_cache()) {
    num_blocks_ =
        std::max(blocks_for_one, (max_batched + config_.block_size - 1) / config_.block_size +
                                     config_.max_num_seqs);
  }
  FASTLM_CHECK_ARG(num_blocks_ >= blocks_for_one, "the KV cache budget of ", budget,
                   " bytes holds ", num_blocks_, " blocks of ", config_.block_size,
                   " tokens, fewer than one sequence of max_model_len=", max_model_len_, " needs (",
                   blocks_for_one, "); raise kv_cache_memory or lower max_model_len");
  if (model_->uses_kv_cache()) {
    kv_ = model::KvStorage::allocate(mc.num_hidden_layers, num_blocks_, config_.block_size,
                                     mc.num_key_value_heads, mc.head_dim, kv_dtype);
    kv_bytes_ = per_block * static_cast<size_t>(num_blocks_);
  } else {
    kv_.num_blocks = num_blocks_;
    kv_.block_size = config_.block_size;
  }

  sched::SchedulerConfig sc;
  sc.max_num_seqs = config_.max_num_seqs;
  sc.max_num_batched_tokens = max_batched;
  sc.max_model_len = max_model_len_;
  sc.block_size = config_.block_size;
  sc.num_blocks = num_blocks_;
  // Pooling requests never reuse cached prefixes (see Scheduler::schedule), so don't hash.
  // Nor encoder-decoder requests (their prompt starts with placeholders for the audio).
  sc.enable_prefix_caching = config_.enable_prefix_caching && !pooling && encoder_slots_ == 0;
  FASTLM_CHECK_ARG(sched::is_supported_hash_algo(config_.prefix_caching_hash_algo),
                   "prefix_caching_hash_algo must be 'sha256', got '",
                   config_.prefix_caching_hash_algo, "'");
  if (config_.scheduling_policy == "fcfs") {
    sc.policy = sched::SchedulingPolicy::kFcfs;
  } else if (config_.scheduling_policy == "priority") {
    sc.policy = sched::SchedulingPolicy::kPriority;
  } else {
    throw InvalidArgument("scheduling_policy must be 'fcfs' or 'priority', got '" +
                          config_.scheduling_policy + "'");
  }
  sc.eos_token_ids = mc.eos_token_ids;
  scheduler_ = std::make_unique<sched::Scheduler>(sc);
  sampler_ = std::make_unique<Sampler>(mc.eos_token_ids, mc.vocab_size, config_.seed);
  FASTLM_CHECK_ARG(config_.grammar_bitmask_timeout_ms > 0,
                   "grammar_bitmask_timeout_ms must be positive, got ",
                   config_.grammar_bitmask_timeout_ms);
  runner_ = std::make_unique<ModelRunner>(
      *model_, kv_, *sampler_, bitmasks_,
      std::chrono::milliseconds(config_.grammar_bitmask_timeout_ms), sc);
  publish_stats();

  event_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  FASTLM_CHECK(event_fd_ >= 0, "eventfd failed");
}

Engine::~Engine() {
  stop_loop();
  if (event_fd_ >= 0) close(event_fd_);
}

double Engine::max_concurrency() const {
  const double blocks_per_seq = std::ceil(static_cast<double>(max_model_len_) / config_.block_size);
  return num_blocks_ / blocks_per_seq;
}

void Engine::add_request(const std::string& request_id, std::vector<int32_t> prompt_token_ids,
                         const sched::SamplingParams& params, int priority,
                         std::string cache_salt) {
  FASTLM_CHECK_ARG(!model_->is_pooling(), "model ", model_->config().architecture,
                   " is a pooling model (embeddings / classification / score); it does not "
                   "generate text");
  FASTLM_CHECK_ARG(encoder_slots_ == 0, "model ", model_->config().architecture,
                   " is a speech-to-text (encoder-decoder) model; it takes audio requests only");
  const int vocab = model_->config().vocab_size;
  FASTLM_CHECK_ARG(!prompt_token_ids.empty(), "the prompt is empty");
  for (int32_t t : prompt_token_ids) {
    FASTLM_CHECK_ARG(t >= 0 && t < vocab, "token id ", t, " is out of vocabulary (size ", vocab,
                     ")");
  }
  FASTLM_CHECK_ARG(static_cast<int>(prompt_token_ids.size()) <= max_model_len_, "the prompt (",
                   prompt_token_ids.size(), " tokens) is longer than the maximum model length of ",
                   max_model_len_);
  FASTLM_CHECK_ARG(params.n == 1, "the engine takes n == 1 requests (fan out n > 1 above it)");
  FASTLM_CHECK_ARG(params.max_tokens >= 1, "max_tokens must be at least 1, got ",
                   params.max_tokens);
  sampler_->validate(params);
  auto request = std::make_unique<sched::Request>();
  request->request_id = request_id;
  request->prompt_token_ids = std::move(prompt_token_ids);
  request->params = params;
  request->priority = priority;
  request->cache_salt = std::move(cache_salt);
  enqueue(std::move(request));
}

void Engine::add_encoder_decoder_request(const std::string& request_id,
                                         std::vector<float> encoder_input,
                                         std::vector<int32_t> decoder_prompt,
                                         const sched::SamplingParams& params, int priority) {
  const model::ModelConfig& mc = model_->config();
  FASTLM_CHECK_ARG(encoder_slots_ > 0, "model ", mc.architecture,
                   " has no encoder; it takes no audio (encoder-decoder) requests");
  int64_t want = 1;
  for (int64_t d : model_->encoder_input_shape()) want *= d;
  FASTLM_CHECK_ARG(static_cast<int64_t>(encoder_input.size()) == want, "the encoder input holds ",
                   encoder_input.size(), " values; the model reads ", want);
  FASTLM_CHECK_ARG(!decoder_prompt.empty(), "the decoder prompt is empty");
  for (int32_t t : decoder_prompt) {
    FASTLM_CHECK_ARG(t >= 0 && t < mc.vocab_size, "token id ", t, " is out of vocabulary (size ",
                     mc.vocab_size, ")");
  }
  FASTLM_CHECK_ARG(static_cast<int>(decoder_prompt.size()) < max_decoder_len(),
                   "the decoder prompt (", decoder_prompt.size(),
                   " tokens) leaves no room in the decoder's ", max_decoder_len(), " positions");
  FASTLM_CHECK_ARG(params.n == 1, "the engine takes n == 1 requests (fan out n > 1 above it)");
  FASTLM_CHECK_ARG(params.max_tokens >= 1, "max_tokens must be at least 1, got ",
                   params.max_tokens);
  FASTLM_CHECK_ARG(params.prompt_logprobs < 0,
                   "prompt_logprobs is not supported for encoder-decoder requests");
  sampler_->validate(params);
  auto request = std::make_unique<sched::Request>();
  request->request_id = request_id;
  request->prompt_token_ids.assign(encoder_slots_, 0);  // the encoder's slots
  request->prompt_token_ids.insert(request->prompt_token_ids.end(), decoder_prompt.begin(),
                                   decoder_prompt.end());
  request->num_encoder_tokens = encoder_slots_;
  request->params = params;
  request->priority = priority;
  enqueue(std::move(request), std::move(encoder_input), std::move(decoder_prompt));
}

void Engine::add_pooling_request(const std::string& request_id,
                                 std::vector<int32_t> prompt_token_ids,
                                 const sched::PoolingParams& params, int priority) {
  const model::ModelConfig& mc = model_->config();
  FASTLM_CHECK_ARG(model_->is_pooling(), "model ", mc.architecture,
                   " is a generative model; it serves no pooling requests (embeddings, "
                   "classification, scores) unless started with runner=pooling");
  FASTLM_CHECK_ARG(!prompt_token_ids.empty(), "the prompt is empty");
  for (int32_t t : prompt_token_ids) {
    FASTLM_CHECK_ARG(t >= 0 && t < mc.vocab_size, "token id ", t, " is out of vocabulary (size ",
                     mc.vocab_size, ")");
  }
  const int n = static_cast<int>(prompt_token_ids.size());
  FASTLM_CHECK_ARG(n <= max_model_len_, "the prompt (", n,
                   " tokens) is longer than the maximum model length of ", max_model_len_);
  FASTLM_CHECK_ARG(!params.use_head || model_->num_labels() > 0, "model ", mc.architecture,
                   " has no classification head");
  FASTLM_CHECK_ARG(!(params.use_head && params.type == sched::PoolingType::kAll),
                   "ALL pooling cannot be combined with the classification head");
  FASTLM_CHECK_ARG(params.token_type_boundary >= -1 && params.token_type_boundary <= n,
                   "token_type_boundary must be in [-1, ", n, "], got ",
                   params.token_type_boundary);
  auto request = std::make_unique<sched::Request>();
  request->request_id = request_id;
  request->prompt_token_ids = std::move(prompt_token_ids);
  request->params.max_tokens = 1;
  request->pooling = params;
  request->priority = priority;
  enqueue(std::move(request));
}

void Engine::enqueue(std::unique_ptr<sched::Request> request, std::vector<float> encoder_input,
                     std::vector<int32_t> decoder_prompt) {
  const std::string& request_id = request->request_id;
  request->arrival_time = now_seconds();
  {
    std::lock_guard<std::mutex> lk(inbox_mu_);
    FASTLM_CHECK_ARG(live_ids_.find(request_id) == live_ids_.end(), "request id '", request_id,
                     "' is already in use");
    request->arrival_seq = arrival_seq_++;
    live_ids_[request_id] = true;
    inbox_.push_back({std::move(request), std::move(encoder_input), std::move(decoder_prompt)});
  }
  inbox_cv_.notify_one();
}

void Engine::abort(const std::string& request_id) {
  {
    std::lock_guard<std::mutex> lk(inbox_mu_);
    if (live_ids_.find(request_id) == live_ids_.end()) return;
    inbox_aborts_.push_back(request_id);
  }
  inbox_cv_.notify_one();
}

bool Engine::has_unfinished() const {
  std::lock_guard<std::mutex> lk(inbox_mu_);
  return !live_ids_.empty();
}

bool Engine::set_token_bitmask(const std::string& request_id, int step,
                               std::vector<int32_t> words) {
  const size_t expected = (static_cast<size_t>(model_->config().vocab_size) + 31) / 32;
  FASTLM_CHECK_ARG(words.size() == expected, "token bitmask has ", words.size(),
                   " words; the vocabulary needs ", expected);
  FASTLM_CHECK_ARG(step >= 0, "token bitmask step must be >= 0, got ", step);
  // Under inbox_mu_, so that a request finishing (which erases its slot under it) cannot leave
  // a slot behind.
  std::lock_guard<std::mutex> lk(inbox_mu_);
  if (live_ids_.find(request_id) == live_ids_.end()) return false;
  bitmasks_.put(request_id, step, std::move(words));
  return true;
}

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

void Engine::push_outputs(std::vector<RequestOutputDelta>&& deltas) {
  if (deltas.empty()) return;
  {
    std::lock_guard<std::mutex> lk(out_mu_);
    for (RequestOutputDelta& d : deltas) {
      auto it = outbox_index_.find(d.request_id);
      if (it == outbox_index_.end()) {
        outbox_index_[d.request_id] = outbox_.size();
        outbox_.push_back(std::move(d));
      } else {
        outbox_[it->second].merge(std::move(d));
      }
    }
  }
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = write(event_fd_, &one, sizeof(one));
}

std::vector<RequestOutputDelta> Engine::poll_outputs() {
  uint64_t value;
  [[maybe_unused]] ssize_t n = read(event_fd_, &value, sizeof(value));  // clear the wakeup
  std::lock_guard<std::mutex> lk(out_mu_);
  std::vector<RequestOutputDelta> out;
  out.swap(outbox_);
  outbox_index_.clear();
  if (!fatal_error_.empty() && out.empty()) throw Error("engine failed: " + fatal_error_);
  return out;
}

bool Engine::failed() {
  std::lock_guard<std::mutex> lk(out_mu_);
  return !fatal_error_.empty();
}

void Engine::start_loop() {
  if (running_loop_.exchange(true)) return;
  stop_ = false;
  thread_ = std::thread([this] { loop(); });
}

void Engine::stop_loop() {
  if (!running_loop_.exchange(false)) return;
  {
    std::lock_guard<std::mutex> lk(inbox_mu_);
    stop_ = true;
  }
  inbox_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Engine::loop() {
  while (true) {
    {
      std::unique_lock<std::mutex> lk(inbox_mu_);
      inbox_cv_.wait(lk, [&] {
        return stop_.load() || !inbox_.empty() || !inbox_aborts_.empty() || !live_ids_.empty();
      });
      if (stop_) return;
    }
    try {
      std::vector<RequestOutputDelta> deltas;
      {
        std::lock_guard<std::mutex> lk(step_mu_);
        deltas = step_locked();
      }
      push_outputs(std::move(deltas));
    } catch (const std::exception& e) {
      // A failed step leaves the batch in an unknown state: fail every live request, stop.
      std::vector<RequestOutputDelta> failed;
      {
        std::lock_guard<std::mutex> lk(inbox_mu_);
        for (auto& [id, live] : live_ids_) {
          RequestOutputDelta d;
          d.request_id = id;
          d.finished = true;
          d.finish_reason = "abort";
          d.error = e.what();
          failed.push_back(std::move(d));
        }
        live_ids_.clear();
        inbox_.clear();
        stop_ = true;
      }
      {
        std::lock_guard<std::mutex> lk(out_mu_);
        fatal_error_ = e.what();
      }
      push_outputs(std::move(failed));
      const uint64_t one = 1;
      [[maybe_unused]] ssize_t n = write(event_fd_, &one, sizeof(one));
      return;
    }
  }
}

void Engine::publish_stats() {
  EngineStats s = counters_;
  const sched::SchedulerStats ss = scheduler_->stats();
  s.num_running = ss.num_running;
  s.num_waiting = ss.num_waiting;
  s.num_blocks = num_blocks_;
  s.num_free_blocks = scheduler_->kv().num_free_blocks();
  s.kv_usage = ss.kv_usage;
  s.prefix_cache_queries = static_cast<int64_t>(ss.prefix_cache_queries);
  s.prefix_cache_hits = static_cast<int64_t>(ss.prefix_cache_hits);
  s.num_preemptions = static_cast<int64_t>(ss.num_preemptions);
  std::lock_guard<std::mutex> lk(stats_mu_);
  stats_ = s;
}

EngineStats Engine::stats() const {
  // A snapshot taken at the end of the last step: never waits for a running step (the
  // server's /metrics reads it from the event loop).
  std::lock_guard<std::mutex> lk(stats_mu_);
  return stats_;
}

}  // namespace fastlm::engine
