#include "model/bert.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/status.h"
#include "model/json_util.h"
#include "ops/ops.h"
#include "ops/prepack.h"

namespace fastlm::model {
namespace {

using json = nlohmann::json;

struct EncoderArch {
  const char* name;
  bool roberta;
  EncoderHead head;
};
constexpr EncoderArch kArchitectures[] = {
    {"BertModel", false, EncoderHead::kNone},
    {"BertForMaskedLM", false, EncoderHead::kNone},
    {"BertForSequenceClassification", false, EncoderHead::kBert},
    {"RobertaModel", true, EncoderHead::kNone},
    {"RobertaForMaskedLM", true, EncoderHead::kNone},
    {"RobertaForSequenceClassification", true, EncoderHead::kRoberta},
    {"XLMRobertaModel", true, EncoderHead::kNone},
    {"XLMRobertaForMaskedLM", true, EncoderHead::kNone},
    {"XLMRobertaForSequenceClassification", true, EncoderHead::kRoberta},
};

const EncoderArch* find_arch(const std::string& name) {
  for (const EncoderArch& a : kArchitectures) {
    if (name == a.name) return &a;
  }
  return nullptr;
}

using json_util::get_or;
using json_util::has;

void check_shape(const Tensor& t, const std::string& name, const std::vector<int64_t>& want) {
  Tensor expected = Tensor::view(nullptr, want, t.dtype());
  FASTLM_CHECK(t.shape() == want, "tensor ", name, " has shape ", t.shape_str(), ", expected ",
               expected.shape_str());
  FASTLM_CHECK(t.dtype() == DType::kF32 || t.dtype() == DType::kF16 || t.dtype() == DType::kBF16,
               "tensor ", name, " has dtype ", dtype_name(t.dtype()), "; expected a float type");
}

void tanh_inplace(Tensor& x) {
  float* p = x.data<float>();
  for (int64_t i = 0; i < x.numel(); ++i) p[i] = std::tanh(p[i]);
}

}  // namespace

bool is_encoder_architecture(const std::string& architecture) {
  return find_arch(architecture) != nullptr;
}

BertConfig parse_bert_config(const std::string& json_text, ModelConfig* config) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception& e) {
    throw Error(std::string("config.json is not valid JSON: ") + e.what());
  }
  FASTLM_CHECK(j.is_object(), "config.json must hold a JSON object");
  ModelConfig& c = *config;
  c = ModelConfig();
  c.model_type = get_or<std::string>(j, "model_type", "");
  if (has(j, "architectures") && j.at("architectures").is_array() &&
      !j.at("architectures").empty()) {
    c.architecture = j.at("architectures")[0].get<std::string>();
  } else if (c.model_type == "bert") {
    c.architecture = "BertModel";
  } else if (c.model_type == "roberta") {
    c.architecture = "RobertaModel";
  } else if (c.model_type == "xlm-roberta") {
    c.architecture = "XLMRobertaModel";
  }
  const EncoderArch* arch = find_arch(c.architecture);
  FASTLM_CHECK(arch != nullptr, "unsupported encoder architecture ", c.architecture);
  BertConfig b;
  b.roberta_positions = arch->roberta;
  b.head = arch->head;
  c.vocab_size = get_or<int>(j, "vocab_size", 30522);
  c.hidden_size = get_or<int>(j, "hidden_size", 768);
  c.num_hidden_layers = get_or<int>(j, "num_hidden_layers", 12);
  c.num_attention_heads = get_or<int>(j, "num_attention_heads", 12);
  c.intermediate_size = get_or<int>(j, "intermediate_size", 3072);
  FASTLM_CHECK(c.vocab_size > 0 && c.hidden_size > 0 && c.num_hidden_layers > 0 &&
                   c.num_attention_heads > 0 && c.intermediate_size > 0 &&
                   c.hidden_size % c.num_attention_heads == 0,
               "config.json: sizes must be positive and hidden_size a multiple of "
               "num_attention_heads");
  c.num_key_value_heads = c.num_attention_heads;
  c.head_dim = c.hidden_size / c.num_attention_heads;
  b.type_vocab_size = get_or<int>(j, "type_vocab_size", 2);
  b.layer_norm_eps = get_or<double>(j, "layer_norm_eps", 1e-12);
  b.pad_token_id = get_or<int>(j, "pad_token_id", arch->roberta ? 1 : 0);
  const std::string act = get_or<std::string>(j, "hidden_act", "gelu");
  FASTLM_CHECK(
      act == "gelu" || act == "gelu_new" || act == "gelu_pytorch_tanh" || act == "gelu_fast",
      "unsupported hidden_act '", act, "' for ", c.architecture,
      "; supported: gelu, gelu_new, gelu_pytorch_tanh");
  b.gelu_tanh = act != "gelu";
  const std::string pos_type = get_or<std::string>(j, "position_embedding_type", "absolute");
  FASTLM_CHECK(pos_type == "absolute", "position_embedding_type '", pos_type,
               "' is not supported (only absolute)");
  const int table = get_or<int>(j, "max_position_embeddings", 512);
  c.max_position_embeddings = arch->roberta ? table - b.pad_token_id - 1 : table;
  FASTLM_CHECK(c.max_position_embeddings > 0, "config.json: max_position_embeddings too small");
  if (b.head != EncoderHead::kNone) {
    // transformers: num_labels = len(id2label) when given, else num_labels, else 2.
    if (has(j, "id2label") && j.at("id2label").is_object()) {
      b.num_labels = static_cast<int>(j.at("id2label").size());
    } else {
      b.num_labels = get_or<int>(j, "num_labels", 2);
    }
    FASTLM_CHECK(b.num_labels > 0, "config.json: num_labels must be positive");
  }
  const std::string dtype =
      get_or<std::string>(j, "torch_dtype", get_or<std::string>(j, "dtype", "float32"));
  c.torch_dtype = dtype == "bfloat16"                       ? DType::kBF16
                  : (dtype == "float16" || dtype == "half") ? DType::kF16
                                                            : DType::kF32;
  return b;
}

Tensor BertModel::matrix(const WeightSource& w, const std::string& name, int64_t rows,
                         int64_t cols) {
  Tensor t = w.get(prefix_ + name);
  check_shape(t, prefix_ + name, {rows, cols});
  if (t.dtype() != compute_dtype_) t = t.to(compute_dtype_);
  weight_bytes_ += t.nbytes();
  return t;
}

Tensor BertModel::vector(const WeightSource& w, const std::string& name, int64_t size) {
  Tensor t = w.get(prefix_ + name);
  check_shape(t, prefix_ + name, {size});
  if (t.dtype() != DType::kF32) t = t.to(DType::kF32);
  weight_bytes_ += t.nbytes();
  return t;
}

void BertModel::layer_norm_params(const WeightSource& w, const std::string& base, Tensor& weight,
                                  Tensor& bias) {
  const int64_t H = config_.hidden_size;
  // Old TF-converted checkpoints name them gamma / beta.
  const bool old = !w.has(prefix_ + base + ".weight") && w.has(prefix_ + base + ".gamma");
  weight = vector(w, base + (old ? ".gamma" : ".weight"), H);
  bias = vector(w, base + (old ? ".beta" : ".bias"), H);
}

BertModel::BertModel(ModelConfig config, BertConfig bert, const WeightSource& w,
                     DType compute_dtype)
    : config_(std::move(config)), bert_(bert), compute_dtype_(compute_dtype) {
  FASTLM_CHECK(compute_dtype_ == DType::kF32 || compute_dtype_ == DType::kBF16,
               "compute dtype must be float32 or bfloat16, not ", dtype_name(compute_dtype_));
  for (const char* p : {"", "bert.", "roberta.", "model."}) {
    if (w.has(std::string(p) + "embeddings.word_embeddings.weight")) {
      prefix_ = p;
      break;
    }
  }
  const ModelConfig& c = config_;
  const int64_t H = c.hidden_size, I = c.intermediate_size;
  const int64_t table =
      c.max_position_embeddings + (bert_.roberta_positions ? bert_.pad_token_id + 1 : 0);
  // Embedding tables stay float32: ops::embedding gathers rows, so their size is the only cost.
  auto table_f32 = [&](const std::string& name, int64_t rows) {
    Tensor t = w.get(prefix_ + name);
    check_shape(t, prefix_ + name, {rows, H});
    if (t.dtype() != DType::kF32) t = t.to(DType::kF32);
    weight_bytes_ += t.nbytes();
    return t;
  };
  word_emb_ = table_f32("embeddings.word_embeddings.weight", c.vocab_size);
  pos_emb_ = table_f32("embeddings.position_embeddings.weight", table);
  if (bert_.type_vocab_size > 0 && w.has(prefix_ + "embeddings.token_type_embeddings.weight")) {
    type_emb_ = table_f32("embeddings.token_type_embeddings.weight", bert_.type_vocab_size);
  }
  layer_norm_params(w, "embeddings.LayerNorm", emb_ln_w_, emb_ln_b_);
  layers_.resize(c.num_hidden_layers);
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "encoder.layer." + std::to_string(l) + ".";
    Layer& L = layers_[l];
    // q, k, v fused into one [3H, H] matrix (and bias) so each block runs one QKV linear.
    L.qkv = Tensor::empty({3 * H, H}, compute_dtype_);
    L.qkv_bias = Tensor::empty({3 * H}, DType::kF32);
    const char* names[] = {"query", "key", "value"};
    for (int i = 0; i < 3; ++i) {
      const std::string base = p + "attention.self." + names[i];
      Tensor m = matrix(w, base + ".weight", H, H);
      Tensor b = vector(w, base + ".bias", H);
      std::memcpy(static_cast<char*>(L.qkv.data()) + i * m.nbytes(), m.data(), m.nbytes());
      std::memcpy(L.qkv_bias.data<float>() + i * H, b.data(), b.nbytes());
    }
    L.o = matrix(w, p + "attention.output.dense.weight", H, H);
    L.o_bias = vector(w, p + "attention.output.dense.bias", H);
    layer_norm_params(w, p + "attention.output.LayerNorm", L.ln1_w, L.ln1_b);
    L.up = matrix(w, p + "intermediate.dense.weight", I, H);
    L.up_bias = vector(w, p + "intermediate.dense.bias", I);
    L.down = matrix(w, p + "output.dense.weight", H, I);
    L.down_bias = vector(w, p + "output.dense.bias", H);
    layer_norm_params(w, p + "output.LayerNorm", L.ln2_w, L.ln2_b);
    for (const Tensor* t : {&L.qkv, &L.o, &L.up, &L.down})
      packed_.push_back(ops::prepack_linear(*t));
  }
  // Heads live outside the body prefix ("classifier.*"); the BERT pooler inside it.
  const std::string saved_prefix = prefix_;
  const int64_t N = bert_.num_labels;
  switch (bert_.head) {
    case EncoderHead::kNone:
      break;
    case EncoderHead::kBert:
      head_dense_ = matrix(w, "pooler.dense.weight", H, H);
      head_dense_bias_ = vector(w, "pooler.dense.bias", H);
      prefix_ = "";
      head_out_ = matrix(w, "classifier.weight", N, H);
      head_out_bias_ = vector(w, "classifier.bias", N);
      break;
    case EncoderHead::kRoberta:
      prefix_ = "";
      head_dense_ = matrix(w, "classifier.dense.weight", H, H);
      head_dense_bias_ = vector(w, "classifier.dense.bias", H);
      head_out_ = matrix(w, "classifier.out_proj.weight", N, H);
      head_out_bias_ = vector(w, "classifier.out_proj.bias", N);
      break;
  }
  prefix_ = saved_prefix;
  for (const Tensor* t : {&head_dense_, &head_out_}) {
    if (t->defined()) packed_.push_back(ops::prepack_linear(*t));
  }
}

void BertModel::ensure_scratch(int64_t num_tokens) {
  if (num_tokens <= scratch_.capacity) return;
  const int64_t n = std::max<int64_t>(num_tokens, scratch_.capacity * 3 / 2);
  const int64_t H = config_.hidden_size, I = config_.intermediate_size;
  scratch_.hidden = Tensor::empty({n, H}, DType::kF32);
  scratch_.tmp = Tensor::empty({n, H}, DType::kF32);
  scratch_.qkv = Tensor::empty({n, 3 * H}, DType::kF32);
  scratch_.attn = Tensor::empty({n, H}, DType::kF32);
  // With bf16 weights the down projection reads the intermediate as bf16 anyway: the up
  // projection writes it so (GELU and rounding fused into its matmul), halving its traffic.
  scratch_.inter =
      Tensor::empty({n, I}, compute_dtype_ == DType::kBF16 ? DType::kBF16 : DType::kF32);
  scratch_.positions = Tensor::empty({n}, DType::kI32);
  scratch_.zero_types = Tensor::zeros({n}, DType::kI32);
  scratch_.capacity = n;
}

void BertModel::plan(int64_t max_num_tokens, int64_t max_model_len) {
  ensure_scratch(max_num_tokens);
}

Tensor BertModel::forward(const ForwardBatch& batch, model::KvStorage& kv) {
  throw InvalidArgument(config_.architecture +
                        " is an encoder (pooling) model; it cannot generate text");
}

Tensor BertModel::forward_hidden(const ForwardBatch& b, model::KvStorage& kv) {
  const ModelConfig& c = config_;
  const int64_t T = b.num_tokens();
  const int S = b.num_seqs();
  const int64_t H = c.hidden_size;
  FASTLM_CHECK_ARG(T > 0, "forward: empty batch");
  FASTLM_CHECK_ARG(static_cast<int64_t>(b.positions.size()) == T,
                   "forward: positions need one entry per token");
  FASTLM_CHECK_ARG(static_cast<int>(b.query_start_loc.size()) == S + 1 &&
                       b.query_start_loc.front() == 0 && b.query_start_loc.back() == T,
                   "forward: query_start_loc must hold num_seqs + 1 offsets from 0 to ", T);
  FASTLM_CHECK_ARG(b.token_type_ids.empty() || static_cast<int64_t>(b.token_type_ids.size()) == T,
                   "forward: token_type_ids need one entry per token");
  for (int32_t id : b.token_ids) {
    FASTLM_CHECK_ARG(id >= 0 && id < c.vocab_size, "forward: token id ", id,
                     " outside the vocabulary [0, ", c.vocab_size, ")");
  }
  for (int s = 0; s < S; ++s) {
    // No chunking: an encoder sees every token of a sequence in the same step.
    FASTLM_CHECK_ARG(b.positions[b.query_start_loc[s]] == 0 &&
                         b.query_start_loc[s + 1] - b.query_start_loc[s] == b.seq_lens[s],
                     "forward: encoder sequences must be computed whole, in one step");
    FASTLM_CHECK_ARG(b.seq_lens[s] <= c.max_position_embeddings, "forward: a sequence of ",
                     b.seq_lens[s], " tokens exceeds max_position_embeddings ",
                     c.max_position_embeddings);
  }
  const int types = type_emb_.defined() ? static_cast<int>(type_emb_.size(0)) : 0;
  for (int32_t t : b.token_type_ids) {
    FASTLM_CHECK_ARG(t >= 0 && (t < types || (t == 0 && types == 0)), "forward: token type ", t,
                     " outside [0, ", std::max(types, 1), ")");
  }

  ensure_scratch(T);
  Tensor hidden = scratch_.hidden.slice_rows(0, T);
  Tensor tmp = scratch_.tmp.slice_rows(0, T);
  Tensor qkv = scratch_.qkv.slice_rows(0, T);
  Tensor attn = scratch_.attn.slice_rows(0, T);
  Tensor inter = scratch_.inter.slice_rows(0, T);

  // Positions: BERT's are the batch positions; RoBERTa's count non-pad tokens from
  // padding_idx + 1, and pad tokens sit at padding_idx (create_position_ids_from_input_ids).
  // Validated here, once, on the host: the embedding op reads rows without checking ids.
  const int64_t pos_rows = pos_emb_.size(0);
  if (bert_.roberta_positions) {
    for (int s = 0; s < S; ++s) {  // the largest RoBERTa position is pad + sequence length
      FASTLM_CHECK_ARG(bert_.pad_token_id >= 0 && bert_.pad_token_id + b.seq_lens[s] < pos_rows,
                       "forward: a sequence of ", b.seq_lens[s],
                       " tokens outruns the position table of ", pos_rows, " rows");
    }
  } else {
    for (int32_t p : b.positions) {
      FASTLM_CHECK_ARG(p >= 0 && p < pos_rows, "forward: position ", p,
                       " outside the position table of ", pos_rows, " rows");
    }
  }
  ExecContext& cx = ctx();
  const Tensor ids = host_view(b.token_ids);
  Tensor pos = host_view(b.positions);
  if (bert_.roberta_positions) {
    pos = scratch_.positions.slice_rows(0, T);
    ops::roberta_positions(cx, ids, host_view(b.query_start_loc), bert_.pad_token_id, pos);
  }
  ops::embedding(cx, word_emb_, ids, hidden);
  ops::embedding(cx, pos_emb_, pos, tmp);
  ops::add(cx, hidden, tmp);
  if (types > 0) {
    const Tensor type_ids = b.token_type_ids.empty() ? scratch_.zero_types.slice_rows(0, T)
                                                     : host_view(b.token_type_ids);
    ops::embedding(cx, type_emb_, type_ids, tmp);
    ops::add(cx, hidden, tmp);
  }
  const float eps = static_cast<float>(bert_.layer_norm_eps);
  ops::layer_norm(cx, hidden, emb_ln_w_, emb_ln_b_, eps, hidden);

  const int heads = c.num_attention_heads, D = c.head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const Tensor qsl = host_view(b.query_start_loc);
  for (const Layer& L : layers_) {
    ops::linear(cx, hidden, L.qkv, &L.qkv_bias, qkv);
    ops::encoder_attention(cx, qkv, qsl, heads, D, scale, attn);
    ops::linear(cx, attn, L.o, &L.o_bias, tmp);
    ops::add_layer_norm(cx, hidden, tmp, L.ln1_w, L.ln1_b, eps);
    ops::linear(cx, hidden, L.up, &L.up_bias, inter,
                bert_.gelu_tanh ? ops::Activation::kGeluTanh : ops::Activation::kGeluErf);
    ops::linear(cx, inter, L.down, &L.down_bias, tmp, ops::Activation::kNone);
    ops::add_layer_norm(cx, hidden, tmp, L.ln2_w, L.ln2_b, eps);
  }
  return hidden;
}

Tensor BertModel::classify(const Tensor& pooled) {
  FASTLM_CHECK_ARG(bert_.head != EncoderHead::kNone, config_.architecture,
                   " has no classification head");
  FASTLM_CHECK_ARG(pooled.dim() == 2 && pooled.size(1) == config_.hidden_size,
                   "classify: pooled rows must be [n, ", config_.hidden_size, "]");
  const int64_t n = pooled.size(0);
  Tensor dense = Tensor::empty({n, config_.hidden_size}, DType::kF32);
  ops::linear(ctx(), pooled, head_dense_, &head_dense_bias_, dense);
  tanh_inplace(dense);
  Tensor logits = Tensor::empty({n, bert_.num_labels}, DType::kF32);
  ops::linear(ctx(), dense, head_out_, &head_out_bias_, logits);
  return logits;
}

}  // namespace fastlm::model
