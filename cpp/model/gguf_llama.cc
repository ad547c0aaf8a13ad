// GGUF files of llama.cpp's llama architecture: tensor names mapped to Hugging Face names, the
// ModelConfig read from the metadata, and the WeightSource over the file (undoing llama.cpp's
// Q/K row permutation). The file format itself is in gguf.cc.
#include <algorithm>
#include <cstring>
#include <map>
#include <regex>

#include "core/status.h"
#include "model/gguf.h"

namespace fastlm::model {

std::string gguf_to_hf_name(const std::string& gguf_name) {
  static const std::map<std::string, std::string> kTop = {
      {"token_embd", "model.embed_tokens"},
      {"output_norm", "model.norm"},
      {"output", "lm_head"},
  };
  static const std::map<std::string, std::string> kLayer = {
      {"attn_norm", "input_layernorm"},    {"ffn_norm", "post_attention_layernorm"},
      {"attn_q", "self_attn.q_proj"},      {"attn_k", "self_attn.k_proj"},
      {"attn_v", "self_attn.v_proj"},      {"attn_output", "self_attn.o_proj"},
      {"attn_q_norm", "self_attn.q_norm"}, {"attn_k_norm", "self_attn.k_norm"},
      {"ffn_gate", "mlp.gate_proj"},       {"ffn_up", "mlp.up_proj"},
      {"ffn_down", "mlp.down_proj"},
  };
  static const std::regex kBlock(R"(blk\.(\d+)\.(\w+)\.(weight|bias))");
  static const std::regex kPlain(R"((\w+)\.(weight|bias))");
  std::smatch m;
  if (std::regex_match(gguf_name, m, kBlock)) {
    auto it = kLayer.find(m[2].str());
    if (it == kLayer.end()) return "";
    return "model.layers." + m[1].str() + "." + it->second + "." + m[3].str();
  }
  if (std::regex_match(gguf_name, m, kPlain)) {
    auto it = kTop.find(m[1].str());
    if (it == kTop.end()) return "";
    return it->second + "." + m[2].str();
  }
  return "";
}

ModelConfig gguf_model_config(const GgufFile& g) {
  const std::string arch = g.get_string("general.architecture", "");
  ModelConfig c;
  if (arch == "llama") {
    c.architecture = "LlamaForCausalLM";
  } else if (arch == "qwen2") {
    c.architecture = "Qwen2ForCausalLM";
  } else if (arch == "qwen3") {
    c.architecture = "Qwen3ForCausalLM";
  } else {
    throw Error("unsupported GGUF architecture '" + arch + "'; supported: llama, qwen2, qwen3");
  }
  c.model_type = arch;
  const std::string p = arch + ".";
  auto need_int = [&](const std::string& key) {
    FASTLM_CHECK(g.has(p + key), "GGUF metadata lacks ", p + key);
    return static_cast<int>(g.get_int(p + key, 0));
  };
  c.hidden_size = need_int("embedding_length");
  c.num_hidden_layers = need_int("block_count");
  c.intermediate_size = need_int("feed_forward_length");
  c.num_attention_heads = need_int("attention.head_count");
  c.num_key_value_heads =
      static_cast<int>(g.get_int(p + "attention.head_count_kv", c.num_attention_heads));
  FASTLM_CHECK(c.num_attention_heads > 0 && c.num_key_value_heads > 0 &&
                   c.num_attention_heads % c.num_key_value_heads == 0,
               "GGUF: bad head counts ", c.num_attention_heads, "/", c.num_key_value_heads);
  c.max_position_embeddings = static_cast<int>(g.get_int(p + "context_length", 2048));
  c.rms_norm_eps = g.get_float(p + "attention.layer_norm_rms_epsilon", 1e-6);
  c.rope_theta = g.get_float(p + "rope.freq_base", 10000.0);
  // transformers reads llama's head_dim from rope.dimension_count, qwen3's from key_length.
  const int default_head_dim = c.hidden_size / c.num_attention_heads;
  const int key_length = static_cast<int>(g.get_int(p + "attention.key_length", default_head_dim));
  c.head_dim = arch == "llama" ? static_cast<int>(g.get_int(p + "rope.dimension_count", key_length))
                               : key_length;
  const std::string scaling = g.get_string(p + "rope.scaling.type", "none");
  if (scaling == "linear" || scaling == "yarn") {
    c.rope_scaling.type = scaling;
    c.rope_scaling.factor = g.get_float(p + "rope.scaling.factor", 1.0);
    c.rope_scaling.original_max_position_embeddings = static_cast<int>(
        g.get_int(p + "rope.scaling.original_context_length", c.max_position_embeddings));
  } else {
    FASTLM_CHECK(scaling == "none", "GGUF rope scaling '", scaling, "' is not supported");
    c.rope_scaling.original_max_position_embeddings = c.max_position_embeddings;
  }
  int64_t vocab = g.get_int(p + "vocab_size", 0);
  if (vocab == 0) {
    auto it = g.metadata().find("tokenizer.ggml.tokens");
    if (it != g.metadata().end()) vocab = static_cast<int64_t>(it->second.array_len);
  }
  if (vocab == 0) {
    const GgufTensorInfo* embd = g.find("token_embd.weight");
    FASTLM_CHECK(embd != nullptr && embd->ne.size() == 2, "GGUF: cannot tell the vocabulary size");
    vocab = embd->ne[1];
  }
  c.vocab_size = static_cast<int>(vocab);
  c.tie_word_embeddings = g.find("output.weight") == nullptr;
  c.attention_bias = g.find("blk.0.attn_q.bias") != nullptr;
  c.qk_norm = g.find("blk.0.attn_q_norm.weight") != nullptr;
  c.bos_token_id = static_cast<int>(g.get_int("tokenizer.ggml.bos_token_id", -1));
  if (g.has("tokenizer.ggml.eos_token_id")) {
    c.eos_token_ids.push_back(static_cast<int>(g.get_int("tokenizer.ggml.eos_token_id", 0)));
  }
  bool all_f32 = true;
  for (const auto& t : g.tensors()) all_f32 = all_f32 && t.type == GgmlType::kF32;
  c.torch_dtype = all_f32 ? DType::kF32 : DType::kBF16;
  return c;
}

GgufSource::GgufSource(std::shared_ptr<GgufFile> file, const ModelConfig& config)
    : file_(std::move(file)),
      unpermute_qk_(config.model_type == "llama"),
      num_heads_(config.num_attention_heads),
      num_kv_heads_(config.num_key_value_heads) {
  for (const auto& t : file_->tensors()) {
    const std::string hf = gguf_to_hf_name(t.name);
    if (!hf.empty()) by_hf_name_[hf] = &t;
  }
}

bool GgufSource::has(const std::string& name) const { return by_hf_name_.count(name) > 0; }

const GgufTensorInfo& GgufSource::info(const std::string& name) const {
  auto it = by_hf_name_.find(name);
  FASTLM_CHECK(it != by_hf_name_.end(), "missing tensor ", name, " in the GGUF file");
  return *it->second;
}

int GgufSource::permuted_heads(const std::string& name) const {
  if (!unpermute_qk_) return 0;
  if (name.find(".self_attn.q_proj.") != std::string::npos) return num_heads_;
  if (name.find(".self_attn.k_proj.") != std::string::npos) return num_kv_heads_;
  return 0;
}

namespace {

// llama.cpp stored row (h, j, i) of each head at (h, i, j): rows [n_head, 2, half] were written
// as [n_head, half, 2]. Copies rows back into HF order (whole rows, so packed blocks too).
void unpermute_rows(const GgufTensorInfo& info, const uint8_t* src, uint8_t* dst, int64_t rows,
                    size_t row_bytes, int n_head) {
  FASTLM_CHECK(rows % (2 * n_head) == 0, "GGUF tensor ", info.name, " has ", rows,
               " rows, not a multiple of 2 x ", n_head, " heads");
  const int64_t half = rows / n_head / 2;
  for (int h = 0; h < n_head; ++h) {
    for (int i = 0; i < 2; ++i) {
      for (int64_t j = 0; j < half; ++j) {
        const int64_t to = (h * 2 + i) * half + j;
        const int64_t from = (h * half + j) * 2 + i;
        std::memcpy(dst + to * row_bytes, src + from * row_bytes, row_bytes);
      }
    }
  }
}

}  // namespace

Tensor GgufSource::get(const std::string& name) const {
  const GgufTensorInfo& t = info(name);
  const int n_head = permuted_heads(name);
  const bool is_float =
      t.type == GgmlType::kF32 || t.type == GgmlType::kF16 || t.type == GgmlType::kBF16;
  if (n_head == 0) return is_float ? file_->view(t) : file_->dequantized(t);
  Tensor src = file_->dequantized(t);
  Tensor dst = Tensor::empty(src.shape(), DType::kF32);
  const int64_t rows = src.size(0);
  unpermute_rows(t, static_cast<const uint8_t*>(src.data()), static_cast<uint8_t*>(dst.data()),
                 rows, src.nbytes() / rows, n_head);
  return dst;
}

std::optional<Weight> GgufSource::get_packed(const std::string& name) const {
  const GgufTensorInfo& t = info(name);
  const std::optional<QType> q = ggml_qtype(t.type);
  if (!q || t.ne.size() != 2) return std::nullopt;
  const int64_t rows = t.ne[1], cols = t.ne[0];
  const size_t row_bytes = qtype_row_bytes(*q, cols);
  const int n_head = permuted_heads(name);
  const auto* src = static_cast<const uint8_t*>(t.data);  // packed rows in the file's order
  Tensor blocks;
  if (ggml_transcoded(t.type)) {
    // Q2_K quantized again into Q8_0 blocks; the file's bytes are not needed afterwards.
    blocks = Tensor::empty({rows, static_cast<int64_t>(row_bytes)}, DType::kU8);
    transcode(t.type, t.data, blocks.data(), rows * cols);
    file_->release(t.data, t.nbytes);
    if (n_head == 0) return Weight::quantized(*q, std::move(blocks), rows, cols);
    src = static_cast<const uint8_t*>(blocks.data());
  } else if (n_head == 0) {
    Tensor view =
        Tensor::view(const_cast<uint8_t*>(t.data), {rows, static_cast<int64_t>(row_bytes)},
                     DType::kU8, file_->mapping());
    return Weight::quantized(*q, std::move(view), rows, cols);
  }
  Tensor dst = Tensor::empty({rows, static_cast<int64_t>(row_bytes)}, DType::kU8);
  unpermute_rows(t, src, static_cast<uint8_t*>(dst.data()), rows, row_bytes, n_head);
  file_->release(t.data, t.nbytes);  // only the un-permuted copy stays resident
  return Weight::quantized(*q, std::move(dst), rows, cols);
}

std::vector<std::string> GgufSource::format_notes(bool packed) const {
  std::map<GgmlType, std::pair<int, size_t>> seen;  // tensors and bytes as stored
  for (const auto& [name, t] : by_hf_name_) {
    if (!ggml_transcoded(t->type)) continue;
    seen[t->type].first += 1;
    seen[t->type].second += t->nbytes;
  }
  std::vector<std::string> notes;
  for (const auto& [type, count] : seen) {
    const std::string what = detail::concat(count.first, " ", ggml_type_name(type), " tensors (",
                                            count.second >> 20, " MiB)");
    if (!packed) continue;  // dequantized, like every other quantized tensor
    // Bytes per 256 weights (the larger block).
    const QType q = *ggml_qtype(type);
    const int64_t n = std::max(qtype_block_elems(q), ggml_block_elems(type));
    notes.push_back(detail::concat(what, " quantized again to ", ggml_type_name(GgmlType::kQ8_0),
                                   " at load, no packed ", ggml_type_name(type), " kernels yet (",
                                   qtype_block_bytes(q) * n / qtype_block_elems(q), " bytes per ",
                                   n, " weights instead of ",
                                   ggml_block_bytes(type) * n / ggml_block_elems(type),
                                   "; a value moves by up to ~1/254 of its 32-block's largest)"));
  }
  return notes;
}

std::vector<std::string> GgufSource::names() const {
  std::vector<std::string> out;
  for (const auto& [name, info] : by_hf_name_) out.push_back(name);
  return out;
}

std::unique_ptr<WeightSource> open_gguf(const std::string& path, ModelConfig* config) {
  auto file = GgufFile::open(path);
  ModelConfig c = gguf_model_config(*file);
  auto source = std::make_unique<GgufSource>(file, c);
  if (config != nullptr) *config = std::move(c);
  return source;
}

}  // namespace fastlm::model
