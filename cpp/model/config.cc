// config.json -> ModelConfig, with each architecture's defaults as its transformers config class
// sets them (transformers 4.x "rope_scaling" and 5.x "rope_parameters" layouts both read).
#include "model/config.h"

#include <array>
#include <nlohmann/json.hpp>

#include "core/status.h"
#include "model/json_util.h"

namespace fastlm::model {
namespace {

using json = nlohmann::json;

constexpr std::array<const char*, 4> kSupported = {"LlamaForCausalLM", "MistralForCausalLM",
                                                   "Qwen2ForCausalLM", "Qwen3ForCausalLM"};

std::string supported_list() {
  std::string s;
  for (const char* a : kSupported) s += (s.empty() ? "" : ", ") + std::string(a);
  return s;
}

using json_util::get_or;
using json_util::has;

DType parse_torch_dtype(const std::string& s) {
  if (s == "float32" || s == "float") return DType::kF32;
  if (s == "bfloat16") return DType::kBF16;
  if (s == "float16" || s == "half") return DType::kF16;
  throw Error("config.json: unsupported torch_dtype '" + s + "'");
}

std::string architecture_from_model_type(const std::string& model_type) {
  if (model_type == "llama") return "LlamaForCausalLM";
  if (model_type == "mistral") return "MistralForCausalLM";
  if (model_type == "qwen2") return "Qwen2ForCausalLM";
  if (model_type == "qwen3") return "Qwen3ForCausalLM";
  return model_type.empty() ? "<none>" : model_type;
}

void parse_rope(const json& j, ModelConfig& c) {
  // 5.x writes "rope_parameters" (with rope_theta inside); 4.x "rope_scaling" + top-level theta.
  json rp = json::object();
  if (has(j, "rope_parameters") && j.at("rope_parameters").is_object()) {
    rp = j.at("rope_parameters");
  } else if (has(j, "rope_scaling") && j.at("rope_scaling").is_object()) {
    rp = j.at("rope_scaling");
  }
  c.rope_theta = get_or<double>(rp, "rope_theta", get_or<double>(j, "rope_theta", 10000.0));
  c.partial_rotary_factor =
      get_or<double>(rp, "partial_rotary_factor", get_or<double>(j, "partial_rotary_factor", 1.0));
  RopeScaling& s = c.rope_scaling;
  s.type = get_or<std::string>(rp, "rope_type", get_or<std::string>(rp, "type", "default"));
  FASTLM_CHECK(s.type == "default" || s.type == "linear" || s.type == "dynamic" ||
                   s.type == "llama3" || s.type == "yarn",
               "unsupported rope scaling type '", s.type,
               "'; supported: default, linear, dynamic, llama3, yarn");
  s.original_max_position_embeddings =
      get_or<int>(rp, "original_max_position_embeddings",
                  get_or<int>(j, "original_max_position_embeddings", c.max_position_embeddings));
  if (s.type == "yarn" && !has(rp, "factor")) {
    // transformers: a missing yarn factor is the context extension ratio.
    s.factor = static_cast<double>(c.max_position_embeddings) / s.original_max_position_embeddings;
  } else {
    s.factor = get_or<double>(rp, "factor", 1.0);
  }
  FASTLM_CHECK(s.type == "default" || has(rp, "factor") || s.type == "yarn", "rope scaling '",
               s.type, "' needs a factor");
  s.low_freq_factor = get_or<double>(rp, "low_freq_factor", 1.0);
  s.high_freq_factor = get_or<double>(rp, "high_freq_factor", 4.0);
  // transformers uses `get("beta_fast") or 32`: 0 also means the default.
  s.beta_fast = get_or<double>(rp, "beta_fast", 0.0);
  if (s.beta_fast == 0.0) s.beta_fast = 32.0;
  s.beta_slow = get_or<double>(rp, "beta_slow", 0.0);
  if (s.beta_slow == 0.0) s.beta_slow = 1.0;
  if (has(rp, "mscale")) s.mscale = rp.at("mscale").get<double>();
  if (has(rp, "mscale_all_dim")) s.mscale_all_dim = rp.at("mscale_all_dim").get<double>();
  if (has(rp, "attention_factor")) s.attention_factor = rp.at("attention_factor").get<double>();
  s.truncate = get_or<bool>(rp, "truncate", true);
}

// Qwen2/Qwen3: sliding attention only when use_sliding_window, on layers >= max_window_layers
// (or as layer_types names them).
void parse_qwen_sliding(const json& j, ModelConfig& c) {
  if (!get_or<bool>(j, "use_sliding_window", false)) return;
  if (j.contains("sliding_window") && j.at("sliding_window").is_null()) return;
  c.sliding_window = get_or<int>(j, "sliding_window", 4096);
  const int max_window_layers = get_or<int>(j, "max_window_layers", 28);
  c.layer_uses_sliding_window.assign(c.num_hidden_layers, false);
  if (has(j, "layer_types")) {
    const auto& types = j.at("layer_types");
    FASTLM_CHECK(types.is_array() && static_cast<int>(types.size()) == c.num_hidden_layers,
                 "config.json: layer_types must list one type per layer");
    for (int i = 0; i < c.num_hidden_layers; ++i) {
      c.layer_uses_sliding_window[i] = types[i].get<std::string>() == "sliding_attention";
    }
  } else {
    for (int i = 0; i < c.num_hidden_layers; ++i) {
      c.layer_uses_sliding_window[i] = i >= max_window_layers;
    }
  }
}

}  // namespace

bool is_supported_decoder(const std::string& architecture) {
  for (const char* a : kSupported) {
    if (architecture == a) return true;
  }
  return false;
}

ModelConfig parse_hf_config(const std::string& json_text) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception& e) {
    throw Error(std::string("config.json is not valid JSON: ") + e.what());
  }
  FASTLM_CHECK(j.is_object(), "config.json must hold a JSON object");
  ModelConfig c;
  c.model_type = get_or<std::string>(j, "model_type", "");
  if (has(j, "architectures") && j.at("architectures").is_array() &&
      !j.at("architectures").empty()) {
    c.architecture = j.at("architectures")[0].get<std::string>();
  } else {
    c.architecture = architecture_from_model_type(c.model_type);
  }
  FASTLM_CHECK(is_supported_decoder(c.architecture), "unsupported architecture ", c.architecture,
               "; supported: ", supported_list());

  const bool llama = c.architecture == "LlamaForCausalLM";
  const bool mistral = c.architecture == "MistralForCausalLM";
  const bool qwen2 = c.architecture == "Qwen2ForCausalLM";
  const bool qwen3 = c.architecture == "Qwen3ForCausalLM";
  if (c.model_type.empty()) {
    c.model_type = llama ? "llama" : mistral ? "mistral" : qwen2 ? "qwen2" : "qwen3";
  }

  const bool qwen = qwen2 || qwen3;
  c.vocab_size = get_or<int>(j, "vocab_size", qwen ? 151936 : 32000);
  c.hidden_size = get_or<int>(j, "hidden_size", 4096);
  c.intermediate_size = get_or<int>(j, "intermediate_size", mistral ? 14336 : qwen ? 22016 : 11008);
  c.num_hidden_layers = get_or<int>(j, "num_hidden_layers", 32);
  c.num_attention_heads = get_or<int>(j, "num_attention_heads", 32);
  const int kv_default = mistral ? 8 : qwen ? 32 : c.num_attention_heads;
  c.num_key_value_heads =
      has(j, "num_key_value_heads")
          ? j.at("num_key_value_heads").get<int>()
          : (j.contains("num_key_value_heads") ? c.num_attention_heads : kv_default);
  FASTLM_CHECK(c.num_attention_heads > 0 && c.hidden_size > 0 && c.num_hidden_layers > 0 &&
                   c.vocab_size > 0 && c.intermediate_size > 0,
               "config.json: sizes must be positive");
  c.head_dim = get_or<int>(j, "head_dim", qwen3 ? 128 : c.hidden_size / c.num_attention_heads);
  FASTLM_CHECK(c.num_key_value_heads > 0 && c.num_attention_heads % c.num_key_value_heads == 0,
               "config.json: num_attention_heads (", c.num_attention_heads,
               ") must be a multiple of num_key_value_heads (", c.num_key_value_heads, ")");
  c.rms_norm_eps = get_or<double>(j, "rms_norm_eps", 1e-6);
  c.max_position_embeddings = get_or<int>(j, "max_position_embeddings",
                                          mistral ? 131072
                                          : qwen  ? 32768
                                                  : 2048);
  parse_rope(j, c);
  c.tie_word_embeddings = get_or<bool>(j, "tie_word_embeddings", false);
  c.attention_bias = qwen2 || ((llama || qwen3) && get_or<bool>(j, "attention_bias", false));
  c.qk_norm = qwen3;
  if (mistral) {
    // Absent: MistralConfig's 4096; null: full attention.
    c.sliding_window = j.contains("sliding_window") ? get_or<int>(j, "sliding_window", 0) : 4096;
  } else if (qwen) {
    parse_qwen_sliding(j, c);
  }
  const int bos_default = (llama || mistral) ? 1 : -1;
  c.bos_token_id = j.contains("bos_token_id") ? get_or<int>(j, "bos_token_id", -1) : bos_default;
  if (has(j, "eos_token_id")) {
    const auto& e = j.at("eos_token_id");
    if (e.is_array()) {
      for (const auto& v : e) c.eos_token_ids.push_back(v.get<int>());
    } else {
      c.eos_token_ids.push_back(e.get<int>());
    }
  } else if (!j.contains("eos_token_id") && (llama || mistral)) {
    c.eos_token_ids.push_back(2);
  }
  const std::string dtype =
      get_or<std::string>(j, "torch_dtype", get_or<std::string>(j, "dtype", ""));
  c.torch_dtype = dtype.empty() ? DType::kF32 : parse_torch_dtype(dtype);
  return c;
}

}  // namespace fastlm::model
