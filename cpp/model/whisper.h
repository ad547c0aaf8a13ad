#pragma once
// Whisper (WhisperForConditionalGeneration; CTranslate2 "WhisperSpec" directories): a conv1d
// front end (two k=3 convolutions + GELU, the second with stride 2) over log-mel features, a
// pre-norm encoder of bidirectional attention with sinusoidal position embeddings, and a
// pre-norm decoder with learned positions, causal self-attention, cross-attention over the
// encoder output and a GELU MLP; logits through the tied token embedding.
//
// KV layout of one request (block_size bs, E = ForwardBatch::num_encoder_slots, a multiple of bs
// >= encoder_len()):
//
//   slots  [0 ............ encoder_len) [.. E) [E ........................ E + decoder tokens)
//          cross-attention K/V           pad    decoder self-attention K/V
//          written once, by the step that runs the request's encoder
//
// so cross-attention K/V live in the request's own blocks: accounted in KV memory, freed with
// them on finish, abort and preemption (a preempted request recomputes its encoder). Batch rows
// with positions < E are the encoder's placeholders; the decoder runs rows >= E at positions
// minus E.
#include <memory>
#include <string>
#include <vector>

#include "model/model.h"
#include "ops/prepack.h"

namespace fastlm::model {

struct WhisperConfig {
  int num_mel_bins = 80;
  int d_model = 0;
  int encoder_layers = 0;
  int encoder_heads = 0;
  int encoder_ffn_dim = 0;
  int decoder_layers = 0;
  int decoder_heads = 0;
  int decoder_ffn_dim = 0;
  int max_source_positions = 1500;  // encoder output length (input frames / 2)
  int max_target_positions = 448;
  int vocab_size = 0;
};

bool is_whisper_config(const std::string& json_text);
// A HF Whisper config.json; `config` receives the decoder's shape for the engine.
WhisperConfig parse_whisper_config(const std::string& json_text, ModelConfig* config);
// A CTranslate2 WhisperSpec, shapes read off its variables; EOS comes from the folder's
// tokenizer.json ("<|endoftext|>").
class Ctranslate2Source;
WhisperConfig whisper_config_from_ctranslate2(const Ctranslate2Source& w, const std::string& folder,
                                              ModelConfig* config);

class WhisperModel : public Model {
 public:
  WhisperModel(ModelConfig config, WhisperConfig whisper, const WeightSource& weights,
               DType compute_dtype);

  const ModelConfig& config() const override { return config_; }
  Tensor forward(const ForwardBatch& batch, model::KvStorage& kv) override;
  size_t weight_bytes() const override { return weight_bytes_; }
  DType compute_dtype() const override { return compute_dtype_; }
  int encoder_len() const override { return whisper_.max_source_positions; }
  std::vector<int64_t> encoder_input_shape() const override {
    return {whisper_.num_mel_bins, 2 * static_cast<int64_t>(whisper_.max_source_positions)};
  }

  // The encoder alone: hidden states [n * encoder_len, d_model] float32 of n feature arrays
  // [num_mel_bins, 2 * encoder_len] (tests compare it with transformers).
  Tensor encode(const std::vector<const float*>& features);

 private:
  // What encoder and decoder layers share: pre-norm self-attention and a GELU MLP.
  struct Block {
    Tensor ln1_w, ln1_b, qkv, qkv_bias, o, o_bias;  // self-attention
    Tensor ln_mlp_w, ln_mlp_b, fc1, fc1_b, fc2, fc2_b;
  };
  struct DecoderLayer : Block {
    Tensor ln2_w, ln2_b, cq, cq_bias, ck, ck_bias, cv, cv_bias, co, co_bias;  // cross-attention
  };
  // x += fc2(gelu(fc1(layer_norm(x)))); `normed`, `inter`, `tmp` are scratch; `per_request`:
  // x is one request's encoder rows (ops::linear_per_request).
  static void mlp(ExecContext& cx, const Block& L, Tensor& x, Tensor& normed, Tensor& inter,
                  Tensor& tmp, bool per_request);

  ModelConfig config_;
  WhisperConfig whisper_;
  DType compute_dtype_;
  size_t weight_bytes_ = 0;
  Tensor conv1_, conv1_b_, conv2_, conv2_b_;  // [d, mels*3], [d, d*3]
  Tensor enc_pos_, dec_pos_;                  // f32 tables
  Tensor enc_ln_w_, enc_ln_b_, dec_ln_w_, dec_ln_b_;
  Tensor embed_;    // [V, d] f32 (gathers)
  Tensor lm_head_;  // [V, d] compute dtype (shares embed_ when f32)
  std::vector<Block> enc_;
  std::vector<DecoderLayer> dec_;
  ops::PackedLinears packed_;  // packed copies of the linear weights, for their lifetime
};

}  // namespace fastlm::model
