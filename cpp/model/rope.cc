#include "model/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/status.h"

namespace fastlm::model {
namespace {

// torch: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), all float32.
std::vector<float> default_inv_freq(double base, int dim) {
  std::vector<float> out(dim / 2);
  for (int i = 0; i < dim / 2; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(dim);
    out[i] = 1.0f / std::pow(static_cast<float>(base), exponent);
  }
  return out;
}

void llama3(const RopeScaling& s, std::vector<float>& inv_freq) {
  const double old_context = s.original_max_position_embeddings;
  const double low_freq_wavelen = old_context / s.low_freq_factor;
  const double high_freq_wavelen = old_context / s.high_freq_factor;
  for (float& f : inv_freq) {
    const float wavelen = 2.0f * static_cast<float>(std::numbers::pi) / f;
    const float scaled = wavelen > low_freq_wavelen ? f / static_cast<float>(s.factor) : f;
    const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
    if (medium) {
      const float smooth = static_cast<float>((old_context / wavelen - s.low_freq_factor) /
                                              (s.high_freq_factor - s.low_freq_factor));
      f = (1.0f - smooth) * scaled / static_cast<float>(s.factor) + smooth * scaled;
    } else {
      f = scaled;
    }
  }
}

float yarn(const ModelConfig& c, int dim, std::vector<float>& inv_freq) {
  const RopeScaling& s = c.rope_scaling;
  const double base = c.rope_theta;
  const double factor = s.factor;
  auto get_mscale = [](double scale, double mscale) {
    return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
  };
  double attention_factor;
  if (s.attention_factor.has_value()) {
    attention_factor = *s.attention_factor;
  } else if (s.mscale.value_or(0.0) != 0.0 && s.mscale_all_dim.value_or(0.0) != 0.0) {
    attention_factor = get_mscale(factor, *s.mscale) / get_mscale(factor, *s.mscale_all_dim);
  } else {
    attention_factor = get_mscale(factor, 1.0);
  }
  const double orig = s.original_max_position_embeddings;
  auto correction_dim = [&](double rotations) {
    return dim * std::log(orig / (rotations * 2.0 * std::numbers::pi)) / (2.0 * std::log(base));
  };
  double low = correction_dim(s.beta_fast);
  double high = correction_dim(s.beta_slow);
  if (s.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;  // avoid a zero-width ramp
  for (int i = 0; i < dim / 2; ++i) {
    const float pos_freq =
        std::pow(static_cast<float>(base), static_cast<float>(2 * i) / static_cast<float>(dim));
    const float extrapolation = 1.0f / pos_freq;
    const float interpolation = 1.0f / (static_cast<float>(factor) * pos_freq);
    const float ramp = std::clamp(static_cast<float>((i - low) / (high - low)), 0.0f, 1.0f);
    const float extrapolation_factor = 1.0f - ramp;
    inv_freq[i] =
        interpolation * (1.0f - extrapolation_factor) + extrapolation * extrapolation_factor;
  }
  return static_cast<float>(attention_factor);
}

}  // namespace

RopeFrequencies compute_rope_frequencies(const ModelConfig& c) {
  const int dim = static_cast<int>(c.head_dim * c.partial_rotary_factor);
  FASTLM_CHECK(dim > 0 && dim % 2 == 0, "rotary dim ", dim, " must be positive and even");
  RopeFrequencies r;
  r.inv_freq = default_inv_freq(c.rope_theta, dim);
  const RopeScaling& s = c.rope_scaling;
  if (s.type == "default" || s.type == "dynamic") {
    // dynamic at init: base * (factor * max_pos / max_pos - (factor - 1))^(...) == base.
  } else if (s.type == "linear") {
    for (float& f : r.inv_freq) f /= static_cast<float>(s.factor);
  } else if (s.type == "llama3") {
    llama3(s, r.inv_freq);
  } else if (s.type == "yarn") {
    r.attention_scaling = yarn(c, dim, r.inv_freq);
  } else {
    throw Error("unsupported rope scaling type '" + s.type + "'");
  }
  return r;
}

RopeCache::RopeCache(const ModelConfig& config)
    : freqs_(compute_rope_frequencies(config)),
      rotary_dim_(static_cast<int>(freqs_.inv_freq.size() * 2)) {
  ensure(std::min(config.max_position_embeddings, 4096));
}

void RopeCache::ensure(int64_t num_positions) {
  const int64_t have = cos_sin_.defined() ? cos_sin_.size(0) : 0;
  if (num_positions <= have) return;
  const int64_t capacity = std::max<int64_t>(num_positions, have * 2);
  const int half = rotary_dim_ / 2;
  Tensor t = Tensor::empty({capacity, rotary_dim_}, DType::kF32);
  float* d = t.data<float>();
  const float scale = freqs_.attention_scaling;
#pragma omp parallel for schedule(static) if (capacity > 1024)
  for (int64_t p = 0; p < capacity; ++p) {
    float* row = d + p * rotary_dim_;
    for (int i = 0; i < half; ++i) {
      // float32 product then cos/sin, as transformers' rotary forward does.
      const float angle = static_cast<float>(p) * freqs_.inv_freq[i];
      row[i] = std::cos(angle) * scale;
      row[half + i] = std::sin(angle) * scale;
    }
  }
  cos_sin_ = std::move(t);
}

}  // namespace fastlm::model
