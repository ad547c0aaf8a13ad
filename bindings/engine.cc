// fastlm._core.Engine and the types that cross with it.
#include "engine/engine.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstring>

#include "bindings/registry.h"
#include "core/dtype.h"
#include "core/status.h"

namespace py = pybind11;
using namespace fastlm::engine;
namespace sched = fastlm::sched;

FASTLM_BINDING(engine) {
  py::enum_<sched::LogprobsMode>(m, "LogprobsMode")
      .value("raw_logprobs", sched::LogprobsMode::kRawLogprobs)
      .value("processed_logprobs", sched::LogprobsMode::kProcessedLogprobs)
      .value("raw_logits", sched::LogprobsMode::kRawLogits)
      .value("processed_logits", sched::LogprobsMode::kProcessedLogits);
  py::class_<sched::SamplingParams>(m, "SamplingParams")
      .def(py::init<>())
      .def_readwrite("n", &sched::SamplingParams::n)
      .def_readwrite("temperature", &sched::SamplingParams::temperature)
      .def_readwrite("top_p", &sched::SamplingParams::top_p)
      .def_readwrite("top_k", &sched::SamplingParams::top_k)
      .def_readwrite("min_p", &sched::SamplingParams::min_p)
      .def_readwrite("presence_penalty", &sched::SamplingParams::presence_penalty)
      .def_readwrite("frequency_penalty", &sched::SamplingParams::frequency_penalty)
      .def_readwrite("repetition_penalty", &sched::SamplingParams::repetition_penalty)
      .def_readwrite("seed", &sched::SamplingParams::seed)
      .def_readwrite("max_tokens", &sched::SamplingParams::max_tokens)
      .def_readwrite("min_tokens", &sched::SamplingParams::min_tokens)
      .def_readwrite("ignore_eos", &sched::SamplingParams::ignore_eos)
      .def_readwrite("stop_token_ids", &sched::SamplingParams::stop_token_ids)
      .def_readwrite("logit_bias", &sched::SamplingParams::logit_bias)
      .def_readwrite("allowed_token_ids", &sched::SamplingParams::allowed_token_ids)
      .def_readwrite("bad_words", &sched::SamplingParams::bad_words)
      .def_readwrite("begin_suppress_tokens", &sched::SamplingParams::begin_suppress_tokens)
      .def_readwrite("timestamp_begin", &sched::SamplingParams::timestamp_begin)
      .def_readwrite("max_initial_timestamp_index",
                     &sched::SamplingParams::max_initial_timestamp_index)
      .def_readwrite("logprobs", &sched::SamplingParams::logprobs)
      .def_readwrite("prompt_logprobs", &sched::SamplingParams::prompt_logprobs)
      .def_readwrite("logprobs_mode", &sched::SamplingParams::logprobs_mode)
      .def_readwrite("has_grammar", &sched::SamplingParams::has_grammar);

  py::enum_<sched::PoolingType>(m, "PoolingType")
      .value("CLS", sched::PoolingType::kCls)
      .value("MEAN", sched::PoolingType::kMean)
      .value("LAST", sched::PoolingType::kLast)
      .value("ALL", sched::PoolingType::kAll);
  py::enum_<sched::PoolingActivation>(m, "PoolingActivation")
      .value("NONE", sched::PoolingActivation::kNone)
      .value("SOFTMAX", sched::PoolingActivation::kSoftmax)
      .value("SIGMOID", sched::PoolingActivation::kSigmoid);
  py::class_<sched::PoolingParams>(m, "PoolingParams")
      .def(py::init<>())
      .def_readwrite("type", &sched::PoolingParams::type)
      .def_readwrite("use_head", &sched::PoolingParams::use_head)
      .def_readwrite("normalize", &sched::PoolingParams::normalize)
      .def_readwrite("activation", &sched::PoolingParams::activation)
      .def_readwrite("token_type_boundary", &sched::PoolingParams::token_type_boundary);

  py::class_<TokenLogprobs>(m, "TokenLogprobs")
      .def_readonly("token", &TokenLogprobs::token)
      .def_readonly("logprob", &TokenLogprobs::logprob)
      .def_readonly("rank", &TokenLogprobs::rank)
      .def_readonly("top", &TokenLogprobs::top);

  py::class_<RequestOutputDelta>(m, "RequestOutputDelta")
      .def_readonly("request_id", &RequestOutputDelta::request_id)
      .def_readonly("new_token_ids", &RequestOutputDelta::new_token_ids)
      .def_readonly("logprobs", &RequestOutputDelta::logprobs)
      .def_readonly("prompt_logprobs", &RequestOutputDelta::prompt_logprobs)
      .def_readonly("finished", &RequestOutputDelta::finished)
      .def_readonly("finish_reason", &RequestOutputDelta::finish_reason)
      .def_readonly("stop_token", &RequestOutputDelta::stop_token)
      .def_readonly("num_prompt_tokens", &RequestOutputDelta::num_prompt_tokens)
      .def_readonly("num_cached_tokens", &RequestOutputDelta::num_cached_tokens)
      .def_readonly("error", &RequestOutputDelta::error)
      // The pooled output as a float32 numpy array of its shape; None when there is none.
      .def_property_readonly("pooled", [](const RequestOutputDelta& d) -> py::object {
        if (d.pooled_shape.empty()) return py::none();
        py::array_t<float> a(d.pooled_shape);
        std::copy(d.pooled.begin(), d.pooled.end(), a.mutable_data());
        return std::move(a);
      });

  py::class_<EngineConfig>(m, "EngineConfig")
      .def(py::init<>())
      .def_readwrite("model", &EngineConfig::model)
      .def_readwrite("dtype", &EngineConfig::dtype)
      .def_readwrite("block_size", &EngineConfig::block_size)
      .def_readwrite("kv_cache_memory", &EngineConfig::kv_cache_memory)
      .def_readwrite("kv_cache_fraction", &EngineConfig::kv_cache_fraction)
      .def_readwrite("max_num_seqs", &EngineConfig::max_num_seqs)
      .def_readwrite("max_num_batched_tokens", &EngineConfig::max_num_batched_tokens)
      .def_readwrite("max_model_len", &EngineConfig::max_model_len)
      .def_readwrite("enable_prefix_caching", &EngineConfig::enable_prefix_caching)
      .def_readwrite("prefix_caching_hash_algo", &EngineConfig::prefix_caching_hash_algo)
      .def_readwrite("scheduling_policy", &EngineConfig::scheduling_policy)
      .def_readwrite("seed", &EngineConfig::seed)
      .def_readwrite("runner", &EngineConfig::runner)
      .def_readwrite("quantization", &EngineConfig::quantization)
      .def_readwrite("fault_after_steps", &EngineConfig::fault_after_steps)
      .def_readwrite("grammar_bitmask_timeout_ms", &EngineConfig::grammar_bitmask_timeout_ms);

  py::class_<EngineStats>(m, "EngineStats")
      .def_readonly("num_running", &EngineStats::num_running)
      .def_readonly("num_waiting", &EngineStats::num_waiting)
      .def_readonly("num_blocks", &EngineStats::num_blocks)
      .def_readonly("num_free_blocks", &EngineStats::num_free_blocks)
      .def_readonly("kv_usage", &EngineStats::kv_usage)
      .def_readonly("prefix_cache_queries", &EngineStats::prefix_cache_queries)
      .def_readonly("prefix_cache_hits", &EngineStats::prefix_cache_hits)
      .def_readonly("num_preemptions", &EngineStats::num_preemptions)
      .def_readonly("prompt_tokens", &EngineStats::prompt_tokens)
      .def_readonly("generation_tokens", &EngineStats::generation_tokens)
      .def_readonly("num_steps", &EngineStats::num_steps);

  py::class_<Engine>(m, "Engine")
      .def(py::init<EngineConfig>(), py::arg("config"), py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("max_model_len", &Engine::max_model_len)
      .def_property_readonly("num_blocks", &Engine::num_blocks)
      .def_property_readonly("max_concurrency", &Engine::max_concurrency)
      .def_property_readonly("kv_cache_bytes", &Engine::kv_cache_bytes)
      .def_property_readonly("weight_bytes", &Engine::weight_bytes)
      .def_property_readonly("mapped_weight_bytes", &Engine::mapped_weight_bytes)
      .def_property_readonly("load_seconds", &Engine::load_seconds)
      .def_property_readonly("load_notes", &Engine::load_notes)
      .def_property_readonly("dtype",
                             [](const Engine& e) { return fastlm::dtype_name(e.compute_dtype()); })
      .def_property_readonly("vocab_size",
                             [](const Engine& e) { return e.model_config().vocab_size; })
      .def_property_readonly("eos_token_ids",
                             [](const Engine& e) { return e.model_config().eos_token_ids; })
      .def_property_readonly("architecture",
                             [](const Engine& e) { return e.model_config().architecture; })
      .def("add_request", &Engine::add_request, py::arg("request_id"), py::arg("prompt_token_ids"),
           py::arg("params"), py::arg("priority") = 0, py::arg("cache_salt") = "")
      .def("add_pooling_request", &Engine::add_pooling_request, py::arg("request_id"),
           py::arg("prompt_token_ids"), py::arg("params"), py::arg("priority") = 0)
      // features: a float32 array of encoder_input_shape (copied; the GIL is held meanwhile).
      .def(
          "add_encoder_decoder_request",
          [](Engine& e, const std::string& request_id,
             py::array_t<float, py::array::c_style | py::array::forcecast> features,
             std::vector<int32_t> decoder_prompt, const sched::SamplingParams& params,
             int priority) {
            std::vector<float> input(features.data(), features.data() + features.size());
            e.add_encoder_decoder_request(request_id, std::move(input), std::move(decoder_prompt),
                                          params, priority);
          },
          py::arg("request_id"), py::arg("features"), py::arg("decoder_prompt"), py::arg("params"),
          py::arg("priority") = 0)
      .def_property_readonly("is_encoder_decoder", &Engine::is_encoder_decoder)
      .def_property_readonly("encoder_input_shape", &Engine::encoder_input_shape)
      .def_property_readonly("max_decoder_len", &Engine::max_decoder_len)
      .def_property_readonly("is_pooling", &Engine::is_pooling)
      .def_property_readonly("num_labels", &Engine::num_labels)
      .def_property_readonly("hidden_size",
                             [](const Engine& e) { return e.model_config().hidden_size; })
      .def("abort", &Engine::abort, py::arg("request_id"))
      // mask: any buffer of ceil(vocab_size / 32) * 4 bytes (llguidance's compute_bitmask).
      .def(
          "set_token_bitmask",
          [](Engine& e, const std::string& request_id, int step, const py::buffer& mask) {
            const py::buffer_info info = mask.request();
            const auto n = static_cast<size_t>(info.size * info.itemsize);
            FASTLM_CHECK_ARG(n % 4 == 0, "token bitmask of ", n, " bytes is not int32 words");
            std::vector<int32_t> words(n / 4);
            std::memcpy(words.data(), info.ptr, n);
            py::gil_scoped_release release;
            return e.set_token_bitmask(request_id, step, std::move(words));
          },
          py::arg("request_id"), py::arg("step"), py::arg("mask"))
      .def("step", &Engine::step, py::call_guard<py::gil_scoped_release>())
      .def("has_unfinished", &Engine::has_unfinished)
      .def("start_loop", &Engine::start_loop)
      .def("stop_loop", &Engine::stop_loop, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("output_fd", &Engine::output_fd)
      .def("poll_outputs", &Engine::poll_outputs, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("failed", &Engine::failed)
      .def("stats", &Engine::stats);
}
