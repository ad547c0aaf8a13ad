#pragma once
// The Llama-family decoder (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM,
// Qwen3ForCausalLM): pre-norm blocks of GQA attention with rotary embeddings and a SwiGLU MLP.
// q/k/v and gate/up projections are fused at load into one matrix each, so every block runs
// three linears plus o_proj.
#include <memory>
#include <string>
#include <vector>

#include "model/model.h"
#include "model/rope.h"

namespace fastlm::model {

class LlamaModel : public Model {
 public:
  // Reads every tensor from `weights` (names as in Hugging Face checkpoints). Matrices are kept
  // in `compute_dtype` (kF32 or kBF16): used in place when stored so, converted once otherwise.
  // Norm weights and biases are kept in float32. Throws fastlm::Error naming a missing or
  // misshapen tensor.
  LlamaModel(ModelConfig config, const WeightSource& weights, DType compute_dtype);
  // load_lm_head = false: the decoder body only (pooling checkpoints without lm_head.weight);
  // forward() then throws and forward_hidden() serves.
  LlamaModel(ModelConfig config, const WeightSource& weights, DType compute_dtype,
             bool load_lm_head);

  const ModelConfig& config() const override { return config_; }
  Tensor forward(const ForwardBatch& batch, model::KvStorage& kv) override;
  size_t weight_bytes() const override { return weight_bytes_; }
  DType compute_dtype() const override { return compute_dtype_; }
  // Final-normed hidden states [T, H] of every token (pooling runners).
  Tensor forward_hidden(const ForwardBatch& batch, model::KvStorage& kv) override;

 private:
  struct Layer {
    Tensor input_norm;  // [H] f32
    Tensor post_norm;   // [H] f32
    Tensor qkv;         // [(Hq + 2 Hk) D, H] compute dtype
    Tensor qkv_bias;    // [(Hq + 2 Hk) D] f32, undefined without bias
    Tensor q_norm;      // [D] f32 (Qwen3)
    Tensor k_norm;
    Tensor o_proj;   // [H, Hq D]
    Tensor o_bias;   // [H] f32 or undefined
    Tensor gate_up;  // [2 I, H]
    Tensor down;     // [H, I]
    int sliding_window = 0;
  };
  // Activation buffers sized for `capacity` tokens; forward() views their first T rows.
  struct Scratch {
    int64_t capacity = 0;
    Tensor hidden, normed, qkv, q, k, v, attn, proj, gate_up, act;
  };

  Tensor matrix(const WeightSource& w, const std::string& name, int64_t rows, int64_t cols);
  Tensor fused_rows(const WeightSource& w, const std::vector<std::string>& names,
                    const std::vector<int64_t>& rows, int64_t cols);
  Tensor vector(const WeightSource& w, const std::string& name, int64_t size);
  Tensor fused_vector(const WeightSource& w, const std::vector<std::string>& names,
                      const std::vector<int64_t>& sizes);
  void ensure_scratch(int64_t num_tokens);
  void validate(const ForwardBatch& batch, const model::KvStorage& kv) const;
  // Runs every block; leaves the last residual in scratch_.hidden and the last MLP output in
  // scratch_.proj (not yet added), for forward() / forward_hidden() to finish.
  void run_layers(const ForwardBatch& batch, model::KvStorage& kv);

  ModelConfig config_;
  DType compute_dtype_;
  size_t weight_bytes_ = 0;
  Tensor embed_tokens_;  // [V, H]
  Tensor lm_head_;       // [V, H], shares embed_tokens_ when tied
  // Packed copies of the linear weights above (ops::prepack_linear handles), for their lifetime.
  std::vector<std::shared_ptr<const void>> packed_;
  Tensor final_norm_;  // [H] f32
  std::vector<Layer> layers_;
  RopeCache rope_;
  Scratch scratch_;
};

}  // namespace fastlm::model
