#pragma once
// The BERT encoder family: BertModel, RobertaModel, XLMRobertaModel (embeddings) and their
// *ForSequenceClassification heads (classifiers, cross-encoders with num_labels = 1). Post-norm
// blocks of bidirectional attention and a GELU MLP; absolute position embeddings (RoBERTa's
// offset by padding_idx + 1), token-type embeddings. The encoder attends within the current
// batch only (ops::encoder_attention), so it never reads the paged KV cache.
#include <memory>
#include <string>
#include <vector>

#include "model/model.h"

namespace fastlm::model {

enum class EncoderHead : uint8_t {
  kNone,     // BertModel / RobertaModel / XLMRobertaModel (and *ForMaskedLM bodies)
  kBert,     // pooler (dense + tanh) then classifier
  kRoberta,  // classifier.dense + tanh then classifier.out_proj
};

struct BertConfig {
  int type_vocab_size = 2;
  double layer_norm_eps = 1e-12;
  bool gelu_tanh = false;  // hidden_act gelu_new / gelu_pytorch_tanh / gelu_fast
  int pad_token_id = 0;
  bool roberta_positions = false;  // positions start at pad_token_id + 1, pads keep pad_token_id
  EncoderHead head = EncoderHead::kNone;
  int num_labels = 0;
};

// Architectures this family covers.
bool is_encoder_architecture(const std::string& architecture);

// Parses an encoder config.json; `config` receives the shared hyper-parameters
// (max_position_embeddings is the usable length: RoBERTa's minus padding_idx + 1).
BertConfig parse_bert_config(const std::string& json_text, ModelConfig* config);

class BertModel : public Model {
 public:
  // Weight names with or without the "bert." / "roberta." prefix; buffers such as
  // embeddings.position_ids are never read. Throws fastlm::Error naming a missing tensor.
  BertModel(ModelConfig config, BertConfig bert, const WeightSource& weights, DType compute_dtype);

  const ModelConfig& config() const override { return config_; }
  Tensor forward(const ForwardBatch& batch, model::KvStorage& kv) override;
  size_t weight_bytes() const override { return weight_bytes_; }
  DType compute_dtype() const override { return compute_dtype_; }
  bool is_pooling() const override { return true; }
  // Valid until the next forward_hidden call (a view of the model's scratch).
  Tensor forward_hidden(const ForwardBatch& batch, model::KvStorage& kv) override;
  void plan(int64_t max_num_tokens, int64_t max_model_len) override;
  int num_labels() const override { return bert_.num_labels; }
  Tensor classify(const Tensor& pooled) override;
  bool uses_kv_cache() const override { return false; }

 private:
  struct Layer {
    Tensor qkv, qkv_bias;  // [3H, H], [3H]
    Tensor o, o_bias;      // [H, H], [H]
    Tensor ln1_w, ln1_b;   // attention.output.LayerNorm
    Tensor up, up_bias;    // intermediate.dense [I, H], [I]
    Tensor down, down_bias;
    Tensor ln2_w, ln2_b;  // output.LayerNorm
  };
  struct Scratch {
    int64_t capacity = 0;
    Tensor hidden, tmp, qkv, attn, inter;
    Tensor positions;   // [capacity] int32: RoBERTa position ids
    Tensor zero_types;  // [capacity] int32 zeros: token types when the batch has none
  };

  Tensor matrix(const WeightSource& w, const std::string& name, int64_t rows, int64_t cols);
  Tensor vector(const WeightSource& w, const std::string& name, int64_t size);
  void layer_norm_params(const WeightSource& w, const std::string& base, Tensor& weight,
                         Tensor& bias);
  void ensure_scratch(int64_t num_tokens);

  ModelConfig config_;
  BertConfig bert_;
  DType compute_dtype_;
  size_t weight_bytes_ = 0;
  std::string prefix_;                    // "", "bert." or "roberta."
  Tensor word_emb_, pos_emb_, type_emb_;  // f32 tables
  Tensor emb_ln_w_, emb_ln_b_;
  std::vector<Layer> layers_;
  // Heads (EncoderHead::kBert: pooler + classifier; kRoberta: dense + out_proj).
  Tensor head_dense_, head_dense_bias_, head_out_, head_out_bias_;
  // Packed copies of the linear weights above (ops::prepack_linear handles), for their lifetime.
  std::vector<std::shared_ptr<const void>> packed_;
  Scratch scratch_;
};

}  // namespace fastlm::model
