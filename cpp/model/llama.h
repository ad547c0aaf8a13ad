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
  LlamaModel(ModelConfig config, const WeightSource& weights, DType compute_dtype,
             MatrixFormat format = {});
  // load_lm_head = false: the decoder body only (pooling checkpoints without lm_head.weight);
  // forward() then throws and forward_hidden() serves.
  LlamaModel(ModelConfig config, const WeightSource& weights, DType compute_dtype,
             bool load_lm_head, MatrixFormat format = {});

  const ModelConfig& config() const override { return config_; }
  Tensor forward(const ForwardBatch& batch, model::KvStorage& kv) override;
  size_t weight_bytes() const override { return weight_bytes_; }
  size_t mapped_weight_bytes() const override { return mapped_bytes_; }
  DType compute_dtype() const override { return compute_dtype_; }
  // Final-normed hidden states [T, H] of every token (pooling runners).
  Tensor forward_hidden(const ForwardBatch& batch, model::KvStorage& kv) override;
  void plan(int64_t max_num_tokens, int64_t max_model_len) override;

 private:
  struct Layer {
    Tensor input_norm;  // [H] f32
    Tensor post_norm;   // [H] f32
    Weight qkv;         // [(Hq + 2 Hk) D, H] compute dtype or packed
    Tensor qkv_bias;    // [(Hq + 2 Hk) D] f32, undefined without bias
    Tensor q_norm;      // [D] f32 (Qwen3)
    Tensor k_norm;
    Weight o_proj;   // [H, Hq D]
    Tensor o_bias;   // [H] f32 or undefined
    Weight gate_up;  // [2 I, H]
    Weight down;     // [H, I]
    int sliding_window = 0;
  };
  // Activation buffers sized for `capacity` tokens; forward() views their first T rows.
  // hidden, normed and proj live across layers. The attention half of a block (qkv, q, k, v,
  // attn) and its MLP half (gate_up, act) are carved per forward from the first T rows' worth
  // of `layer`, each half dead before the other starts: a prefill chunk touches max(halves)
  // instead of their sum (RSS).
  struct Scratch {
    int64_t capacity = 0;
    Tensor hidden, normed, proj;
    Tensor layer;  // capacity x max(attention half, MLP half) floats
  };

  // A matrix as format_ says: packed as stored, quantized to `quantize_to`, or in the compute
  // dtype. Fused rows concatenate (packed only when every part is packed alike).
  Weight matrix(const WeightSource& w, const std::string& name, int64_t rows, int64_t cols,
                std::optional<QType> quantize_to);
  Weight fused_rows(const WeightSource& w, const std::vector<std::string>& names,
                    const std::vector<int64_t>& rows, int64_t cols);
  std::optional<Weight> stored_packed(const WeightSource& w, const std::string& name, int64_t rows,
                                      int64_t cols) const;
  Weight quantized(const Tensor& dense, QType type);
  // ops::prepack_linear of a dense matrix (kept in packed_), then the file pages it came from
  // released; no-op for packed weights.
  void prepack(const WeightSource& w, const Weight& t);
  // Copies every packed matrix into one 2 MiB-aligned buffer, in the order a step reads them.
  void place_packed(const WeightSource& w);
  // Moves the panels of packed_ (prepack's copies) into one huge-page buffer, in step order.
  void place_prepacked();
  Tensor vector(const WeightSource& w, const std::string& name, int64_t size);
  Tensor fused_vector(const WeightSource& w, const std::vector<std::string>& names,
                      const std::vector<int64_t>& sizes);
  void ensure_scratch(int64_t num_tokens);
  void validate(const ForwardBatch& batch, const model::KvStorage& kv);
  // Runs every block; leaves the last residual in scratch_.hidden and the last MLP output in
  // scratch_.proj (not yet added), for forward() / forward_hidden() to finish.
  void run_layers(const ForwardBatch& batch, model::KvStorage& kv);

  ModelConfig config_;
  DType compute_dtype_;
  MatrixFormat format_;
  size_t weight_bytes_ = 0;
  size_t mapped_bytes_ = 0;
  Weight embed_tokens_;  // [V, H]
  Weight lm_head_;       // [V, H], shares embed_tokens_ when tied
  // Packed copies of the dense linear weights above (ops::prepack_linear handles), for their
  // lifetime; quantized weights run from their own blocks.
  std::vector<std::shared_ptr<const void>> packed_;
  Tensor final_norm_;  // [H] f32
  std::vector<Layer> layers_;
  RopeCache rope_;
  Scratch scratch_;
};

}  // namespace fastlm::model
