#include "model/whisper.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/status.h"
#include "cpu/cpu_common.h"
#include "model/ctranslate2.h"
#include "model/json_util.h"
#include "ops/batch_checks.h"
#include "ops/ops.h"

namespace fastlm::model {
namespace {

using json = nlohmann::json;
using json_util::get_or;
using json_util::has;

constexpr float kLayerNormEps = 1e-5f;  // torch.nn.LayerNorm's default, as Whisper uses

json parse_json(const std::string& text, const char* what) {
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw Error(detail::concat(what, " is not valid JSON: ", e.what()));
  }
}

// Names of one parameter in the two formats.
struct Name {
  std::string hf, ct2;
};

// Reads parameters by their HF or CTranslate2 name, converting them once to the dtype they are
// computed in.
class Params {
 public:
  Params(const WeightSource& w, DType compute, size_t* bytes)
      : w_(w), compute_(compute), bytes_(bytes), ct2_(w.has("encoder/conv1/weight")) {}
  bool ct2() const { return ct2_; }
  const std::string& name(const Name& n) const { return ct2_ ? n.ct2 : n.hf; }
  bool has(const Name& n) const { return w_.has(name(n)); }
  Tensor raw(const Name& n, const std::vector<int64_t>& shape) const {
    Tensor t = w_.get(name(n));
    const Tensor want = Tensor::view(nullptr, shape, t.dtype());
    FASTLM_CHECK(t.numel() == want.numel(), "tensor ", name(n), " has shape ", t.shape_str(),
                 ", expected ", want.shape_str());
    FASTLM_CHECK(t.dtype() == DType::kF32 || t.dtype() == DType::kF16 || t.dtype() == DType::kBF16,
                 "tensor ", name(n), " is not a float tensor");
    return t.reshape(shape);
  }
  Tensor as(Tensor t, DType dtype) {
    if (t.dtype() != dtype) t = t.to(dtype);
    *bytes_ += t.nbytes();
    return t;
  }
  Tensor matrix(const Name& n, int64_t rows, int64_t cols) {
    return as(raw(n, {rows, cols}), compute_);
  }
  Tensor vec(const Name& n, int64_t size) { return as(raw(n, {size}), DType::kF32); }
  Tensor table(const Name& n, int64_t rows, int64_t cols) {
    return as(raw(n, {rows, cols}), DType::kF32);
  }
  // Row blocks [rows_i, cols] of several tensors (or zeros where a name is empty) stacked.
  Tensor stacked(const std::vector<Name>& names, int64_t rows, int64_t cols, DType dtype) {
    Tensor out = Tensor::zeros({rows * static_cast<int64_t>(names.size()), cols}, dtype);
    for (size_t i = 0; i < names.size(); ++i) {
      if (name(names[i]).empty()) continue;
      Tensor t = raw(names[i], {rows, cols}).to(dtype);
      std::memcpy(static_cast<char*>(out.data()) + i * t.nbytes(), t.data(), t.nbytes());
    }
    *bytes_ += out.nbytes();
    return out;
  }

 private:
  const WeightSource& w_;
  DType compute_;
  size_t* bytes_;
  bool ct2_;
};

// Layer-norm names: HF "<base>.weight/.bias", CTranslate2 "<base>/gamma|beta".
void layer_norm(Params& p, const std::string& hf, const std::string& ct2, int64_t d, Tensor& w,
                Tensor& b) {
  w = p.vec({hf + ".weight", ct2 + "/gamma"}, d);
  b = p.vec({hf + ".bias", ct2 + "/beta"}, d);
}

// ops::linear with an activation, as a plain function (mlp picks it or linear_per_request).
void linear_act(ExecContext& cx, const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y,
                ops::Activation act) {
  ops::linear(cx, x, w, bias, y, act);
}

void add_inplace(Tensor& x, const Tensor& y) {
  float* a = x.data<float>();
  const float* b = y.data<float>();
  const int64_t n = x.numel();
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) a[i] += b[i];
}

// Rows of a [T, 3 * d] q|k|v tensor split into three [T, d] tensors.
void split_qkv(const Tensor& qkv, Tensor& q, Tensor& k, Tensor& v) {
  const int64_t T = qkv.size(0), d = q.size(1);
  const float* src = qkv.data<float>();
  for (int64_t t = 0; t < T; ++t) {
    std::memcpy(q.data<float>() + t * d, src + t * 3 * d, d * sizeof(float));
    std::memcpy(k.data<float>() + t * d, src + t * 3 * d + d, d * sizeof(float));
    std::memcpy(v.data<float>() + t * d, src + t * 3 * d + 2 * d, d * sizeof(float));
  }
}

// im2col for a k=3, padding 1 convolution over time: out[t, c * 3 + j] = in(c, t * stride - 1 + j)
// where `in` is read channel-major (features [C, T_in]) or time-major ([T_in, C]).
void im2col3(const float* in, int64_t channels, int64_t t_in, bool time_major, int stride,
             Tensor& out) {
  const int64_t t_out = out.size(0);
  float* o = out.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < t_out; ++t) {
    float* row = o + t * channels * 3;
    for (int64_t c = 0; c < channels; ++c) {
      for (int j = 0; j < 3; ++j) {
        const int64_t s = t * stride - 1 + j;
        float v = 0.0f;
        if (s >= 0 && s < t_in) v = time_major ? in[s * channels + c] : in[c * t_in + s];
        row[c * 3 + j] = v;
      }
    }
  }
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  FASTLM_CHECK(in.good(), "cannot read ", path.string());
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

void fill_model_config(const WhisperConfig& w, ModelConfig* config) {
  ModelConfig& c = *config;
  c.architecture = "WhisperForConditionalGeneration";
  c.model_type = "whisper";
  c.vocab_size = w.vocab_size;
  c.hidden_size = w.d_model;
  c.intermediate_size = w.decoder_ffn_dim;
  c.num_hidden_layers = w.decoder_layers;
  c.num_attention_heads = w.decoder_heads;
  c.num_key_value_heads = w.decoder_heads;
  FASTLM_CHECK(w.decoder_heads > 0 && w.d_model % w.decoder_heads == 0 && w.encoder_heads > 0 &&
                   w.d_model % w.encoder_heads == 0,
               "whisper: d_model ", w.d_model, " must be a multiple of the head counts");
  c.head_dim = w.d_model / w.decoder_heads;
  c.max_position_embeddings = w.max_target_positions;
}

}  // namespace

bool is_whisper_config(const std::string& json_text) {
  json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return false;
  if (get_or<std::string>(j, "model_type", "") == "whisper") return true;
  return has(j, "architectures") && j.at("architectures").is_array() &&
         !j.at("architectures").empty() &&
         j.at("architectures")[0] == "WhisperForConditionalGeneration";
}

WhisperConfig parse_whisper_config(const std::string& json_text, ModelConfig* config) {
  const json j = parse_json(json_text, "config.json");
  WhisperConfig w;
  w.num_mel_bins = get_or<int>(j, "num_mel_bins", 80);
  w.d_model = get_or<int>(j, "d_model", 0);
  w.encoder_layers = get_or<int>(j, "encoder_layers", 0);
  w.encoder_heads = get_or<int>(j, "encoder_attention_heads", 0);
  w.encoder_ffn_dim = get_or<int>(j, "encoder_ffn_dim", 0);
  w.decoder_layers = get_or<int>(j, "decoder_layers", 0);
  w.decoder_heads = get_or<int>(j, "decoder_attention_heads", 0);
  w.decoder_ffn_dim = get_or<int>(j, "decoder_ffn_dim", 0);
  w.max_source_positions = get_or<int>(j, "max_source_positions", 1500);
  w.max_target_positions = get_or<int>(j, "max_target_positions", 448);
  w.vocab_size = get_or<int>(j, "vocab_size", 0);
  const std::string act = get_or<std::string>(j, "activation_function", "gelu");
  FASTLM_CHECK(act == "gelu", "whisper: activation_function '", act, "' is not supported (gelu)");
  FASTLM_CHECK(!get_or<bool>(j, "scale_embedding", false),
               "whisper: scale_embedding = true is not supported");
  FASTLM_CHECK(w.d_model > 0 && w.encoder_layers > 0 && w.decoder_layers > 0 && w.vocab_size > 0,
               "whisper config.json lacks d_model, encoder_layers, decoder_layers or vocab_size");
  *config = ModelConfig();
  fill_model_config(w, config);
  if (has(j, "eos_token_id")) config->eos_token_ids.push_back(j.at("eos_token_id").get<int>());
  const std::string dtype =
      get_or<std::string>(j, "torch_dtype", get_or<std::string>(j, "dtype", "float32"));
  config->torch_dtype = dtype == "bfloat16"                       ? DType::kBF16
                        : (dtype == "float16" || dtype == "half") ? DType::kF16
                                                                  : DType::kF32;
  return w;
}

WhisperConfig whisper_config_from_ctranslate2(const Ctranslate2Source& src,
                                              const std::string& folder, ModelConfig* config) {
  FASTLM_CHECK(src.spec_name() == "WhisperSpec", folder, ": CTranslate2 spec '", src.spec_name(),
               "' is not supported (fastlm reads WhisperSpec models)");
  WhisperConfig w;
  const Tensor conv1 = src.get("encoder/conv1/weight");
  FASTLM_CHECK(conv1.dim() == 3 && conv1.size(2) == 3, "encoder/conv1/weight must be [d, mels, 3]");
  w.d_model = static_cast<int>(conv1.size(0));
  w.num_mel_bins = static_cast<int>(conv1.size(1));
  auto count_layers = [&](const std::string& side) {
    int n = 0;
    while (src.has(side + "/layer_" + std::to_string(n) + "/ffn/linear_0/weight")) ++n;
    return n;
  };
  w.encoder_layers = count_layers("encoder");
  w.decoder_layers = count_layers("decoder");
  w.encoder_heads = static_cast<int>(src.scalar("encoder/num_heads", 0));
  w.decoder_heads = static_cast<int>(src.scalar("decoder/num_heads", 0));
  w.encoder_ffn_dim = static_cast<int>(src.get("encoder/layer_0/ffn/linear_0/weight").size(0));
  w.decoder_ffn_dim = static_cast<int>(src.get("decoder/layer_0/ffn/linear_0/weight").size(0));
  w.max_source_positions =
      static_cast<int>(src.get("encoder/position_encodings/encodings").size(0));
  w.max_target_positions =
      static_cast<int>(src.get("decoder/position_encodings/encodings").size(0));
  w.vocab_size = static_cast<int>(src.get("decoder/embeddings/weight").size(0));
  FASTLM_CHECK(src.scalar("decoder/scale_embeddings", 0) == 0,
               "whisper: scaled embeddings are not supported");
  *config = ModelConfig();
  fill_model_config(w, config);
  config->torch_dtype = conv1.dtype();
  const auto tok = std::filesystem::path(folder) / "tokenizer.json";
  FASTLM_CHECK(std::filesystem::exists(tok), folder, " has no tokenizer.json");
  const json t = parse_json(read_file(tok), "tokenizer.json");
  if (has(t, "added_tokens")) {
    for (const json& a : t.at("added_tokens")) {
      if (a.value("content", "") == "<|endoftext|>") {
        config->eos_token_ids.push_back(a.at("id").get<int>());
      }
    }
  }
  FASTLM_CHECK(!config->eos_token_ids.empty(), tok.string(), " has no <|endoftext|> token");
  return w;
}

WhisperModel::WhisperModel(ModelConfig config, WhisperConfig whisper, const WeightSource& weights,
                           DType compute_dtype)
    : config_(std::move(config)), whisper_(whisper), compute_dtype_(compute_dtype) {
  FASTLM_CHECK(compute_dtype_ == DType::kF32 || compute_dtype_ == DType::kBF16,
               "compute dtype must be float32 or bfloat16, not ", dtype_name(compute_dtype_));
  Params p(weights, compute_dtype_, &weight_bytes_);
  const WhisperConfig& w = whisper_;
  const int64_t d = w.d_model, M = w.num_mel_bins, V = w.vocab_size;
  const std::string he = "model.encoder.", hd = "model.decoder.";
  conv1_ = p.matrix({he + "conv1.weight", "encoder/conv1/weight"}, d, M * 3);
  conv1_b_ = p.vec({he + "conv1.bias", "encoder/conv1/bias"}, d);
  conv2_ = p.matrix({he + "conv2.weight", "encoder/conv2/weight"}, d, d * 3);
  conv2_b_ = p.vec({he + "conv2.bias", "encoder/conv2/bias"}, d);
  enc_pos_ = p.table({he + "embed_positions.weight", "encoder/position_encodings/encodings"},
                     w.max_source_positions, d);
  dec_pos_ = p.table({hd + "embed_positions.weight", "decoder/position_encodings/encodings"},
                     w.max_target_positions, d);
  layer_norm(p, he + "layer_norm", "encoder/layer_norm", d, enc_ln_w_, enc_ln_b_);
  layer_norm(p, hd + "layer_norm", "decoder/layer_norm", d, dec_ln_w_, dec_ln_b_);
  embed_ = p.table({hd + "embed_tokens.weight", "decoder/embeddings/weight"}, V, d);
  lm_head_ = compute_dtype_ == DType::kF32 ? embed_ : p.as(embed_, compute_dtype_);

  // Attention q|k|v fused into one [3d, d] matrix; HF's k_proj has no bias (zeros here).
  auto self_attention = [&](const std::string& hf, const std::string& ct2, Tensor& qkv,
                            Tensor& qkv_bias, Tensor& o, Tensor& o_bias) {
    if (p.ct2()) {
      qkv = p.matrix({"", ct2 + "/linear_0/weight"}, 3 * d, d);
      qkv_bias = p.vec({"", ct2 + "/linear_0/bias"}, 3 * d);
    } else {
      qkv = p.stacked(
          {{hf + ".q_proj.weight", ""}, {hf + ".k_proj.weight", ""}, {hf + ".v_proj.weight", ""}},
          d, d, compute_dtype_);
      qkv_bias = p.stacked({{hf + ".q_proj.bias", ""}, {"", ""}, {hf + ".v_proj.bias", ""}}, 1, d,
                           DType::kF32)
                     .reshape({3 * d});
    }
    o = p.matrix({hf + ".out_proj.weight", ct2 + "/linear_1/weight"}, d, d);
    o_bias = p.vec({hf + ".out_proj.bias", ct2 + "/linear_1/bias"}, d);
  };
  // Self-attention and MLP of a layer; `ffn` its MLP width.
  auto block = [&](const std::string& h, const std::string& c, int64_t ffn, Block& L) {
    layer_norm(p, h + "self_attn_layer_norm", c + "self_attention/layer_norm", d, L.ln1_w, L.ln1_b);
    self_attention(h + "self_attn", c + "self_attention", L.qkv, L.qkv_bias, L.o, L.o_bias);
    layer_norm(p, h + "final_layer_norm", c + "ffn/layer_norm", d, L.ln_mlp_w, L.ln_mlp_b);
    L.fc1 = p.matrix({h + "fc1.weight", c + "ffn/linear_0/weight"}, ffn, d);
    L.fc1_b = p.vec({h + "fc1.bias", c + "ffn/linear_0/bias"}, ffn);
    L.fc2 = p.matrix({h + "fc2.weight", c + "ffn/linear_1/weight"}, d, ffn);
    L.fc2_b = p.vec({h + "fc2.bias", c + "ffn/linear_1/bias"}, d);
  };
  enc_.resize(w.encoder_layers);
  for (int l = 0; l < w.encoder_layers; ++l) {
    block(he + "layers." + std::to_string(l) + ".", "encoder/layer_" + std::to_string(l) + "/",
          w.encoder_ffn_dim, enc_[l]);
  }
  dec_.resize(w.decoder_layers);
  for (int l = 0; l < w.decoder_layers; ++l) {
    DecoderLayer& L = dec_[l];
    const std::string h = hd + "layers." + std::to_string(l) + ".";
    const std::string c = "decoder/layer_" + std::to_string(l) + "/";
    block(h, c, w.decoder_ffn_dim, L);
    layer_norm(p, h + "encoder_attn_layer_norm", c + "attention/layer_norm", d, L.ln2_w, L.ln2_b);
    L.cq = p.matrix({h + "encoder_attn.q_proj.weight", c + "attention/linear_0/weight"}, d, d);
    L.cq_bias = p.vec({h + "encoder_attn.q_proj.bias", c + "attention/linear_0/bias"}, d);
    if (p.ct2()) {  // k|v fused: [2d, d], bias [2d]
      Tensor kv = p.matrix({"", c + "attention/linear_1/weight"}, 2 * d, d);
      Tensor kv_b = p.vec({"", c + "attention/linear_1/bias"}, 2 * d);
      L.ck = kv.slice_rows(0, d);
      L.cv = kv.slice_rows(d, 2 * d);
      L.ck_bias = kv_b.slice_rows(0, d);
      L.cv_bias = kv_b.slice_rows(d, 2 * d);
    } else {
      L.ck = p.matrix({h + "encoder_attn.k_proj.weight", ""}, d, d);
      L.cv = p.matrix({h + "encoder_attn.v_proj.weight", ""}, d, d);
      L.cv_bias = p.vec({h + "encoder_attn.v_proj.bias", ""}, d);
    }
    L.co = p.matrix({h + "encoder_attn.out_proj.weight", c + "attention/linear_2/weight"}, d, d);
    L.co_bias = p.vec({h + "encoder_attn.out_proj.bias", c + "attention/linear_2/bias"}, d);
  }
  // The decoder's linear weights packed once for the CPU GEMM (unpacked ones would be packed per
  // call). The encoder's, the conv front end's and the cross-attention K/V projections run one
  // request at a time through ops::linear_per_request (oneDNN), which reads them in place.
  for (const DecoderLayer& L : dec_) {
    for (const Tensor* t : {&L.qkv, &L.o, &L.fc1, &L.fc2, &L.cq, &L.co}) {
      packed_.push_back(ops::prepack_linear(*t));
    }
  }
  packed_.push_back(ops::prepack_linear(lm_head_));
}

void WhisperModel::mlp(ExecContext& cx, const Block& L, Tensor& x, Tensor& normed, Tensor& inter,
                       Tensor& tmp, bool per_request) {
  ops::layer_norm(cx, x, L.ln_mlp_w, L.ln_mlp_b, kLayerNormEps, normed);
  const auto linear = per_request ? &ops::linear_per_request : &linear_act;
  linear(cx, normed, L.fc1, &L.fc1_b, inter, ops::Activation::kGeluErf);
  linear(cx, inter, L.fc2, &L.fc2_b, tmp, ops::Activation::kNone);
  add_inplace(x, tmp);
}

Tensor WhisperModel::encode(const std::vector<const float*>& features) {
  ExecContext& cx = ctx();
  const WhisperConfig& w = whisper_;
  const int64_t n = static_cast<int64_t>(features.size());
  const int64_t d = w.d_model, M = w.num_mel_bins, S = w.max_source_positions, F = 2 * S;
  const int heads = w.encoder_heads;
  const int D = static_cast<int>(d / heads);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  Tensor out = Tensor::empty({n * S, d}, DType::kF32);
  // One request at a time: every linear has M = S (2S for conv1) whatever the batch, so the
  // per-request matmuls (ops::linear_per_request) keep each encoder's output independent of
  // the others in the step.
  Tensor cols1 = Tensor::empty({F, M * 3}, DType::kF32);
  Tensor h1 = Tensor::empty({F, d}, DType::kF32);
  Tensor cols2 = Tensor::empty({S, d * 3}, DType::kF32);
  Tensor normed = Tensor::empty({S, d}, DType::kF32);
  Tensor qkv = Tensor::empty({S, 3 * d}, DType::kF32);
  Tensor attn = Tensor::empty({S, d}, DType::kF32);
  Tensor tmp = Tensor::empty({S, d}, DType::kF32);
  Tensor inter = Tensor::empty({S, w.encoder_ffn_dim},
                               compute_dtype_ == DType::kBF16 ? DType::kBF16 : DType::kF32);
  const std::vector<int32_t> qsl = {0, static_cast<int32_t>(S)};
  const Tensor qsl_t = host_view(qsl);
  for (int64_t i = 0; i < n; ++i) {
    Tensor x = out.slice_rows(i * S, (i + 1) * S);
    im2col3(features[i], M, F, /*time_major=*/false, 1, cols1);
    ops::linear_per_request(cx, cols1, conv1_, &conv1_b_, h1, ops::Activation::kGeluErf);
    im2col3(h1.data<float>(), d, F, /*time_major=*/true, 2, cols2);
    ops::linear_per_request(cx, cols2, conv2_, &conv2_b_, x, ops::Activation::kGeluErf);
    add_inplace(x, enc_pos_);
    for (const Block& L : enc_) {
      ops::layer_norm(cx, x, L.ln1_w, L.ln1_b, kLayerNormEps, normed);
      ops::linear_per_request(cx, normed, L.qkv, &L.qkv_bias, qkv);
      ops::encoder_attention(cx, qkv, qsl_t, heads, D, scale, attn);
      ops::linear_per_request(cx, attn, L.o, &L.o_bias, tmp);
      add_inplace(x, tmp);
      mlp(cx, L, x, normed, inter, tmp, /*per_request=*/true);
    }
    ops::layer_norm(cx, x, enc_ln_w_, enc_ln_b_, kLayerNormEps, x);
  }
  return out;
}

Tensor WhisperModel::forward(const ForwardBatch& b, model::KvStorage& kv) {
  ExecContext& cx = ctx();
  const WhisperConfig& w = whisper_;
  const int64_t d = w.d_model;
  const int S = b.num_seqs();
  const int bs = kv.block_size;
  const int E = b.num_encoder_slots;
  const int enc_len = w.max_source_positions;
  FASTLM_CHECK_ARG(E >= enc_len && E % bs == 0, "whisper forward: num_encoder_slots ", E,
                   " must be a multiple of the block size ", bs, " and >= ", enc_len);
  FASTLM_CHECK_ARG(static_cast<int>(b.encoder_inputs.size()) == S,
                   "whisper forward: encoder_inputs needs one entry per sequence");
  FASTLM_CHECK_ARG(static_cast<int>(b.query_start_loc.size()) == S + 1 &&
                       b.query_start_loc.back() == b.num_tokens(),
                   "whisper forward: query_start_loc must hold num_seqs + 1 offsets");
  const int enc_blocks = E / bs;

  // 1. Encoders of the sequences that start this step; their cross-attention K/V go to KV slots
  // [0, encoder_len) of the sequence.
  std::vector<const float*> feats;
  std::vector<int64_t> cross_slots;
  for (int s = 0; s < S; ++s) {
    if (b.encoder_inputs[s] == nullptr) continue;
    const int r0 = b.query_start_loc[s];
    FASTLM_CHECK_ARG(b.query_start_loc[s + 1] - r0 > E && b.positions[r0] == 0,
                     "whisper forward: a sequence runs its encoder in one step with its first "
                     "decoder token");
    feats.push_back(b.encoder_inputs[s]);
    for (int p = 0; p < enc_len; ++p) cross_slots.push_back(b.slot_mapping[r0 + p]);
  }
  const Tensor cross_slot_t = host_view(cross_slots);
  const int64_t num_slots = kv.k.at(0).size(0) * kv.k.at(0).size(1);
  if (!feats.empty()) {
    ops::check_slot_mapping(cross_slot_t, num_slots);
    Tensor enc = encode(feats);
    const int64_t T = enc.size(0);
    Tensor k = Tensor::empty({T, d}, DType::kF32);
    Tensor v = Tensor::empty({T, d}, DType::kF32);
    for (size_t l = 0; l < dec_.size(); ++l) {
      const DecoderLayer& L = dec_[l];
      for (int64_t r = 0; r < T; r += enc_len) {  // per request, as the encoder
        const Tensor e = enc.slice_rows(r, r + enc_len);
        Tensor kr = k.slice_rows(r, r + enc_len), vr = v.slice_rows(r, r + enc_len);
        ops::linear_per_request(cx, e, L.ck, L.ck_bias.defined() ? &L.ck_bias : nullptr, kr);
        ops::linear_per_request(cx, e, L.cv, &L.cv_bias, vr);
      }
      ops::write_kv(cx, k, v, kv.k[l], kv.v[l], cross_slot_t);
    }
  }

  // 2. The decoder over rows at positions >= E.
  std::vector<int32_t> row_of(b.num_tokens(), -1);
  std::vector<int32_t> ids, pos;
  std::vector<int64_t> slots;
  std::vector<int32_t> qsl(1, 0), seq_lens, tables;
  const int self_blocks = std::max(1, b.max_blocks_per_seq - enc_blocks);
  std::vector<int32_t> cross_tables;  // [T, enc_blocks]: each decoder row's encoder blocks
  for (int s = 0; s < S; ++s) {
    const int32_t* table = b.block_tables.data() + static_cast<int64_t>(s) * b.max_blocks_per_seq;
    for (int r = b.query_start_loc[s]; r < b.query_start_loc[s + 1]; ++r) {
      const int p = b.positions[r] - E;
      if (p < 0) continue;
      FASTLM_CHECK_ARG(p < w.max_target_positions, "whisper forward: decoder position ", p,
                       " beyond max_target_positions ", w.max_target_positions);
      FASTLM_CHECK_ARG(b.token_ids[r] >= 0 && b.token_ids[r] < w.vocab_size,
                       "whisper forward: token id ", b.token_ids[r], " out of vocabulary");
      row_of[r] = static_cast<int32_t>(ids.size());
      ids.push_back(b.token_ids[r]);
      pos.push_back(p);
      slots.push_back(b.slot_mapping[r]);
      cross_tables.insert(cross_tables.end(), table, table + enc_blocks);
    }
    qsl.push_back(static_cast<int32_t>(ids.size()));
    seq_lens.push_back(std::max(0, b.seq_lens[s] - E));
    for (int j = 0; j < self_blocks; ++j) {
      const int col = enc_blocks + j;
      tables.push_back(col < b.max_blocks_per_seq ? table[col] : 0);
    }
  }
  const int64_t T = static_cast<int64_t>(ids.size());
  const int64_t n_out = static_cast<int64_t>(b.logits_indices.size());
  Tensor logits = Tensor::empty({n_out, w.vocab_size}, DType::kF32);
  if (T == 0) return logits;
  for (int32_t r : b.logits_indices) {
    FASTLM_CHECK_ARG(r >= 0 && r < b.num_tokens() && row_of[r] >= 0,
                     "whisper forward: a logits row is not a decoder row");
  }

  const int heads = w.decoder_heads;
  const int D = static_cast<int>(d / heads);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  Tensor x = Tensor::empty({T, d}, DType::kF32);
  Tensor tmp = Tensor::empty({T, d}, DType::kF32);
  const Tensor ids_t = host_view(ids), pos_t = host_view(pos), slots_t = host_view(slots);
  ops::check_token_ids(ids_t, w.vocab_size);
  ops::check_positions(pos_t, w.max_target_positions);
  ops::check_slot_mapping(slots_t, num_slots);
  ops::embedding(cx, embed_, ids_t, x);
  ops::embedding(cx, dec_pos_, pos_t, tmp);
  add_inplace(x, tmp);
  Tensor normed = Tensor::empty({T, d}, DType::kF32);
  Tensor qkv = Tensor::empty({T, 3 * d}, DType::kF32);
  Tensor q = Tensor::empty({T, d}, DType::kF32);
  Tensor k = Tensor::empty({T, d}, DType::kF32);
  Tensor v = Tensor::empty({T, d}, DType::kF32);
  Tensor attn = Tensor::empty({T, d}, DType::kF32);
  Tensor inter = Tensor::empty({T, w.decoder_ffn_dim}, DType::kF32);
  ops::AttentionBatch self_batch{host_view(qsl), host_view(seq_lens),
                                 host_view(tables, S, self_blocks), bs};
  const Tensor cross_tables_t = host_view(cross_tables, T, enc_blocks);
  ops::check_attention_batch(self_batch, T, kv.k[0].size(0));
  for (const int32_t blk : cross_tables) {
    FASTLM_CHECK_ARG(blk >= 0 && blk < kv.k[0].size(0), "whisper forward: block id ", blk,
                     " out of range");
  }
  for (size_t l = 0; l < dec_.size(); ++l) {
    const DecoderLayer& L = dec_[l];
    ops::layer_norm(cx, x, L.ln1_w, L.ln1_b, kLayerNormEps, normed);
    ops::linear(cx, normed, L.qkv, &L.qkv_bias, qkv);
    split_qkv(qkv, q, k, v);
    ops::write_kv(cx, k, v, kv.k[l], kv.v[l], slots_t);
    ops::paged_attention(cx, q, kv.k[l], kv.v[l], self_batch, heads, heads, D, scale, 0, attn);
    ops::linear(cx, attn, L.o, &L.o_bias, tmp);
    add_inplace(x, tmp);
    ops::layer_norm(cx, x, L.ln2_w, L.ln2_b, kLayerNormEps, normed);
    ops::linear(cx, normed, L.cq, &L.cq_bias, q);
    ops::cross_attention(cx, q, kv.k[l], kv.v[l], cross_tables_t, enc_len, heads, D, scale, attn);
    ops::linear(cx, attn, L.co, &L.co_bias, tmp);
    add_inplace(x, tmp);
    mlp(cx, L, x, normed, inter, tmp, /*per_request=*/false);
  }
  Tensor last = Tensor::empty({n_out, d}, DType::kF32);
  for (int64_t i = 0; i < n_out; ++i) {
    std::memcpy(last.data<float>() + i * d, x.data<float>() + row_of[b.logits_indices[i]] * d,
                d * sizeof(float));
  }
  ops::layer_norm(cx, last, dec_ln_w_, dec_ln_b_, kLayerNormEps, last);
  ops::linear(cx, last, lm_head_, nullptr, logits);
  return logits;
}

}  // namespace fastlm::model
