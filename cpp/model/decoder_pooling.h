#pragma once
// A Llama-family decoder served as a pooling model: *ForSequenceClassification checkpoints
// (Qwen2ForSequenceClassification, LlamaForSequenceClassification, ...: a `score` head
// applied to the last token) and causal-LM checkpoints under the pooling runner (last-token
// embeddings). The body is LlamaModel; attention stays causal and uses the paged KV cache.
#include <memory>
#include <string>
#include <vector>

#include "model/llama.h"
#include "model/model.h"

namespace fastlm::model {

// "Qwen2ForSequenceClassification" -> "Qwen2ForCausalLM" when the body is a supported decoder;
// empty otherwise.
std::string decoder_body_architecture(const std::string& architecture);

class DecoderPoolingModel : public Model {
 public:
  // `config` describes the body (a supported CausalLM architecture); `architecture` is the
  // checkpoint's own name, reported by config(). num_labels > 0 loads score.weight
  // [num_labels, H].
  DecoderPoolingModel(ModelConfig config, const std::string& architecture, int num_labels,
                      const WeightSource& weights, DType compute_dtype);

  const ModelConfig& config() const override { return config_; }
  Tensor forward(const ForwardBatch& batch, model::KvStorage& kv) override;
  size_t weight_bytes() const override { return body_->weight_bytes() + score_.nbytes(); }
  DType compute_dtype() const override { return body_->compute_dtype(); }
  bool is_pooling() const override { return true; }
  void plan(int64_t max_num_tokens, int64_t max_model_len) override {
    body_->plan(max_num_tokens, max_model_len);
  }
  Tensor forward_hidden(const ForwardBatch& batch, model::KvStorage& kv) override {
    return body_->forward_hidden(batch, kv);
  }
  int num_labels() const override { return num_labels_; }
  Tensor classify(const Tensor& pooled) override;

 private:
  ModelConfig config_;
  std::unique_ptr<LlamaModel> body_;
  int num_labels_ = 0;
  Tensor score_;  // [num_labels, H] compute dtype
  // Packed copies of the linear weights above (ops::prepack_linear handles), for their lifetime.
  std::vector<std::shared_ptr<const void>> packed_;
};

}  // namespace fastlm::model
