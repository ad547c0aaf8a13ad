#include "model/decoder_pooling.h"

#include "core/status.h"
#include "model/config.h"
#include "ops/ops.h"
#include "ops/prepack.h"

namespace fastlm::model {

std::string decoder_body_architecture(const std::string& architecture) {
  const std::string suffix = "ForSequenceClassification";
  if (architecture.size() <= suffix.size() ||
      architecture.compare(architecture.size() - suffix.size(), suffix.size(), suffix) != 0) {
    return "";
  }
  const std::string body =
      architecture.substr(0, architecture.size() - suffix.size()) + "ForCausalLM";
  return is_supported_decoder(body) ? body : "";
}

DecoderPoolingModel::DecoderPoolingModel(ModelConfig config, const std::string& architecture,
                                         int num_labels, const WeightSource& w, DType compute_dtype)
    : config_(config), num_labels_(num_labels) {
  const bool has_lm_head = w.has("lm_head.weight");
  body_ = std::make_unique<LlamaModel>(std::move(config), w, compute_dtype, has_lm_head);
  config_.architecture = architecture;
  if (num_labels_ > 0) {
    Tensor t = w.get("score.weight");
    FASTLM_CHECK(t.dim() == 2 && t.size(0) == num_labels_ && t.size(1) == config_.hidden_size,
                 "tensor score.weight has shape ", t.shape_str(), ", expected [", num_labels_, ", ",
                 config_.hidden_size, "]");
    score_ = t.dtype() == compute_dtype ? t : t.to(compute_dtype);
    packed_.push_back(ops::prepack_linear(score_));
  }
}

Tensor DecoderPoolingModel::forward(const ForwardBatch& batch, model::KvStorage& kv) {
  throw InvalidArgument(config_.architecture +
                        " is served as a pooling model; it cannot generate text");
}

Tensor DecoderPoolingModel::classify(const Tensor& pooled) {
  FASTLM_CHECK_ARG(num_labels_ > 0, config_.architecture, " has no score head");
  FASTLM_CHECK_ARG(pooled.dim() == 2 && pooled.size(1) == config_.hidden_size,
                   "classify: pooled rows must be [n, ", config_.hidden_size, "]");
  Tensor logits = Tensor::empty({pooled.size(0), num_labels_}, DType::kF32);
  ops::linear(ctx(), pooled, score_, nullptr, logits);
  return logits;
}

}  // namespace fastlm::model
