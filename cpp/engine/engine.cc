#include "engine/engine.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/status.h"
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

  allocate_kv_cache(max_batched, load.device);

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

}  // namespace fastlm::engine
