#pragma once
// Decoder model hyper-parameters, read from a Hugging Face config.json or GGUF metadata.
#include <optional>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace fastlm::model {

struct RopeScaling {
  std::string type = "default";  // default | linear | llama3 | yarn | dynamic
  double factor = 1.0;
  // llama3
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int original_max_position_embeddings = 0;
  // yarn
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  std::optional<double> mscale;
  std::optional<double> mscale_all_dim;
  std::optional<double> attention_factor;
  bool truncate = true;
};

struct ModelConfig {
  std::string architecture;  // e.g. LlamaForCausalLM
  std::string model_type;    // e.g. llama
  int vocab_size = 0;
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_hidden_layers = 0;
  int num_attention_heads = 0;
  int num_key_value_heads = 0;
  int head_dim = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  double partial_rotary_factor = 1.0;
  RopeScaling rope_scaling;
  int max_position_embeddings = 2048;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v projections carry a bias (Qwen2: always)
  bool qk_norm = false;         // Qwen3
  int sliding_window = 0;       // 0 = full attention
  // Per-layer sliding window flags where the config names layer types; empty = all layers use
  // sliding_window.
  std::vector<bool> layer_uses_sliding_window;
  std::vector<int> eos_token_ids;
  int bos_token_id = -1;
  DType torch_dtype = DType::kF32;
};

// Parses config.json text; throws fastlm::Error naming an unsupported architecture.
ModelConfig parse_hf_config(const std::string& json_text);

// Architectures the decoder family covers.
bool is_supported_decoder(const std::string& architecture);

}  // namespace fastlm::model
