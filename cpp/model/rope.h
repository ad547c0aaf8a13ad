#pragma once
// Rotary embedding tables: inverse frequencies and the cos/sin attention scaling for each rope
// type, computed as transformers' modeling_rope_utils does (default, linear, dynamic, llama3,
// yarn), and a cos/sin cache that grows with the largest position seen.
#include <vector>

#include "core/tensor.h"
#include "model/config.h"

namespace fastlm::model {

struct RopeFrequencies {
  std::vector<float> inv_freq;     // [rotary_dim / 2], float32 as torch computes them
  float attention_scaling = 1.0f;  // multiplies cos and sin (yarn)
};

// Rotary dim = int(head_dim * partial_rotary_factor). "dynamic" returns its initial
// frequencies (seq_len = max_position_embeddings), i.e. the default ones; transformers only
// rescales them once a sequence grows past max_position_embeddings.
RopeFrequencies compute_rope_frequencies(const ModelConfig& config);

// cos_sin [capacity, rotary_dim] float32: cos(pos * inv_freq) in [:, :D/2], sin in [:, D/2:],
// both times attention_scaling: the layout ops::rope reads.
class RopeCache {
 public:
  explicit RopeCache(const ModelConfig& config);
  // Makes rows [0, num_positions) available; grows geometrically, so amortized O(1).
  void ensure(int64_t num_positions);
  const Tensor& cos_sin() const { return cos_sin_; }
  int rotary_dim() const { return rotary_dim_; }
  const RopeFrequencies& frequencies() const { return freqs_; }

 private:
  RopeFrequencies freqs_;
  int rotary_dim_ = 0;
  Tensor cos_sin_;
};

}  // namespace fastlm::model
