#pragma once
// The engine: owns the model, KV storage, scheduler and sampler. Python talks to it through a
// thread-safe inbox (add_request, abort) and an output queue (poll_outputs, woken by an eventfd)
// while the loop runs on its own C++ thread; step() drives it synchronously instead (tests, the
// offline LLM API). Never both at once.
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "engine/model_runner.h"
#include "engine/output.h"
#include "engine/sampler.h"
#include "engine/token_bitmasks.h"
#include "model/kv_storage.h"
#include "model/model.h"
#include "sched/pooling_params.h"
#include "sched/request.h"
#include "sched/sampling_params.h"
#include "sched/scheduler.h"

namespace fastlm::engine {

struct EngineConfig {
  std::string model;
  std::string dtype = "auto";
  int block_size = 16;
  // KV cache budget in bytes; 0 = kv_cache_fraction of the memory available at start-up.
  int64_t kv_cache_memory = 0;
  double kv_cache_fraction = 0.25;
  int max_num_seqs = 256;
  int max_num_batched_tokens = 0;  // 0 = max(2048, max_model_len) capped at 8192
  int max_model_len = 0;           // 0 = the model's max_position_embeddings
  bool enable_prefix_caching = true;
  // vLLM's --prefix-caching-hash-algo; fastlm implements "sha256" (kv/block_hash.h).
  std::string prefix_caching_hash_algo = "sha256";
  std::string scheduling_policy = "fcfs";  // fcfs | priority
  uint64_t seed = 0;
  // auto | generate | pooling (model::LoadOptions::runner). Pooling models take only
  // add_pooling_request; their prompts are never chunked, so max_num_batched_tokens must be
  // >= max_model_len (its default then is max(2048, max_model_len)), and prefix caching is off.
  std::string runner = "auto";
  // vLLM's --quantization (model::LoadOptions::quantization): "", gguf, none, q8_0, q4_0, q4_1.
  std::string quantization;
  // Test hook (fault injection): the step after this many steps throws, as a kernel failure
  // would, so tests can check what clients see when the engine dies. -1 = off.
  int64_t fault_after_steps = -1;
  // How long sampling waits for a constrained request's grammar mask (set_token_bitmask) once
  // the forward is done; a request whose mask does not come is aborted with an error.
  int grammar_bitmask_timeout_ms = 30000;
};

struct EngineStats {
  int num_running = 0;
  int num_waiting = 0;
  int num_blocks = 0;
  int num_free_blocks = 0;
  double kv_usage = 0.0;
  int64_t prefix_cache_queries = 0;
  int64_t prefix_cache_hits = 0;
  int64_t num_preemptions = 0;
  int64_t prompt_tokens = 0;      // prompt tokens computed (prefill work done)
  int64_t generation_tokens = 0;  // tokens sampled
  int64_t num_steps = 0;
};

class Engine {
 public:
  explicit Engine(EngineConfig config);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const model::ModelConfig& model_config() const { return model_->config(); }
  const EngineConfig& config() const { return config_; }
  int max_model_len() const { return max_model_len_; }
  int num_blocks() const { return num_blocks_; }
  // Requests that fit in the KV cache at once at full max_model_len.
  double max_concurrency() const;
  DType compute_dtype() const { return model_->compute_dtype(); }
  size_t weight_bytes() const { return model_->weight_bytes(); }
  size_t mapped_weight_bytes() const { return model_->mapped_weight_bytes(); }
  double load_seconds() const { return load_seconds_; }
  // What loading decided on the caller's behalf (dtype changes), for the start-up output.
  const std::vector<std::string>& load_notes() const { return model_->load_notes(); }
  size_t kv_cache_bytes() const { return kv_bytes_; }

  // Thread-safe. Validates (empty prompt, out-of-vocab ids, length, duplicate id) and throws
  // InvalidArgument; the request is served from the next step on.
  // `cache_salt` keeps the request's prefix-cache blocks apart from those of other salts.
  void add_request(const std::string& request_id, std::vector<int32_t> prompt_token_ids,
                   const sched::SamplingParams& params, int priority = 0,
                   std::string cache_salt = "");
  // Thread-safe. A prefill-only request of a pooling model: its finished delta carries the
  // pooled output. Throws InvalidArgument on a generative model, for a head the model lacks, or
  // for a prompt longer than max_model_len.
  void add_pooling_request(const std::string& request_id, std::vector<int32_t> prompt_token_ids,
                           const sched::PoolingParams& params, int priority = 0);
  // Thread-safe. A request of an encoder-decoder (speech-to-text) model: `encoder_input` holds
  // encoder_input_shape() float32 values (Whisper: log-mel features), `decoder_prompt` the
  // decoder's first tokens (Whisper: <|startoftranscript|> ... ). Throws InvalidArgument on a
  // model without an encoder, a wrong input size, or a decoder prompt beyond max_decoder_len.
  void add_encoder_decoder_request(const std::string& request_id, std::vector<float> encoder_input,
                                   std::vector<int32_t> decoder_prompt,
                                   const sched::SamplingParams& params, int priority = 0);
  bool is_encoder_decoder() const { return encoder_slots_ > 0; }
  std::vector<int64_t> encoder_input_shape() const { return model_->encoder_input_shape(); }
  // Decoder tokens (prompt + output) a request may hold; max_model_len() minus the encoder's
  // slots for encoder-decoder models.
  int max_decoder_len() const { return max_model_len_ - encoder_slots_; }
  bool is_pooling() const { return model_->is_pooling(); }
  int num_labels() const { return model_->num_labels(); }

  // Thread-safe; unknown or finished ids are ignored. Blocks are freed at the next step (at
  // once when the loop is idle), and a finished delta with reason "abort" is emitted.
  void abort(const std::string& request_id);

  // Synchronous mode: one scheduling + forward + sampling step. Returns the deltas it made.
  std::vector<RequestOutputDelta> step();
  bool has_unfinished() const;

  // Thread-safe. The grammar mask of a has_grammar request for its output token `step` (0 =
  // first), computed from the tokens before it: ceil(vocab_size / 32) int32 words, bit i % 32 of
  // word i / 32 set = token i allowed. Push it any time before that token is sampled (in the
  // background loop, while the forward runs). False (mask dropped) when the request has finished.
  bool set_token_bitmask(const std::string& request_id, int step, std::vector<int32_t> words);

  // Background mode.
  void start_loop();
  void stop_loop();
  int output_fd() const { return event_fd_; }
  // Drains what the loop produced, merged per request, in first-seen order. Rethrows a fatal
  // engine error.
  std::vector<RequestOutputDelta> poll_outputs();
  // True once the loop died: its error deltas then concern every request, not one.
  bool failed();

  EngineStats stats() const;

 private:
  void drain_inbox();
  void enqueue(std::unique_ptr<sched::Request> request, std::vector<float> encoder_input = {},
               std::vector<int32_t> decoder_prompt = {});
  std::vector<RequestOutputDelta> step_locked();
  void loop();
  void push_outputs(std::vector<RequestOutputDelta>&& deltas);
  // Sizes num_blocks_ (EngineConfig::kv_cache_memory, else the backend's budget) and allocates
  // the KV storage (engine_kv.cc).
  void allocate_kv_cache(int max_batched, Device device);

  EngineConfig config_;
  std::unique_ptr<model::Model> model_;
  model::KvStorage kv_;
  std::unique_ptr<sched::Scheduler> scheduler_;
  std::unique_ptr<Sampler> sampler_;
  double load_seconds_ = 0;  // wall time of load_model
  TokenBitmasks bitmasks_;
  std::unique_ptr<ModelRunner> runner_;
  int max_model_len_ = 0;
  int num_blocks_ = 0;
  size_t kv_bytes_ = 0;
  // Encoder-decoder models: KV slots per request for the cross-attention K/V (encoder_len
  // rounded up to whole blocks); 0 otherwise.
  int encoder_slots_ = 0;

  // Inbox (any thread -> engine).
  struct NewRequest {
    std::unique_ptr<sched::Request> request;
    std::vector<float> encoder_input;
    std::vector<int32_t> decoder_prompt;
  };
  mutable std::mutex inbox_mu_;
  std::condition_variable inbox_cv_;
  std::deque<NewRequest> inbox_;
  std::vector<std::string> inbox_aborts_;
  std::unordered_map<std::string, bool> live_ids_;  // ids added and not yet finished

  // Engine-thread state.
  std::mutex step_mu_;
  std::unordered_map<std::string, RequestState> states_;
  EngineStats counters_;
  void publish_stats();
  mutable std::mutex stats_mu_;
  EngineStats stats_;  // snapshot for stats(), under stats_mu_

  // Outbox (engine -> Python).
  std::mutex out_mu_;
  std::vector<RequestOutputDelta> outbox_;
  std::unordered_map<std::string, size_t> outbox_index_;
  std::string fatal_error_;
  int event_fd_ = -1;

  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> running_loop_{false};
  uint64_t arrival_seq_ = 0;
};

}  // namespace fastlm::engine
