// parse_hf_config defaults and rope frequency math.
#include <gtest/gtest.h>

#include <cmath>

#include "core/status.h"
#include "model/config.h"
#include "model/rope.h"

namespace fastlm::model {
namespace {

TEST(ModelConfig, LlamaDefaults) {
  ModelConfig c = parse_hf_config(R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
      "num_attention_heads": 4, "num_hidden_layers": 2, "intermediate_size": 128,
      "vocab_size": 500})");
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.num_key_value_heads, 4);  // defaults to num_attention_heads
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.max_position_embeddings, 2048);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.rope_scaling.type, "default");
  EXPECT_FALSE(c.attention_bias);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.sliding_window, 0);
  EXPECT_EQ(c.bos_token_id, 1);
  ASSERT_EQ(c.eos_token_ids.size(), 1u);
  EXPECT_EQ(c.eos_token_ids[0], 2);
  EXPECT_EQ(c.torch_dtype, DType::kF32);
}

TEST(ModelConfig, RopeScalingOldAndNewLayouts) {
  ModelConfig old_style = parse_hf_config(R"({"architectures": ["LlamaForCausalLM"],
      "rope_theta": 500000.0, "rope_scaling": {"type": "linear", "factor": 2.0},
      "eos_token_id": [5, 7], "torch_dtype": "bfloat16"})");
  EXPECT_EQ(old_style.rope_scaling.type, "linear");
  EXPECT_DOUBLE_EQ(old_style.rope_scaling.factor, 2.0);
  EXPECT_DOUBLE_EQ(old_style.rope_theta, 500000.0);
  EXPECT_EQ(old_style.eos_token_ids, (std::vector<int>{5, 7}));
  EXPECT_EQ(old_style.torch_dtype, DType::kBF16);

  ModelConfig new_style = parse_hf_config(R"({"architectures": ["LlamaForCausalLM"],
      "max_position_embeddings": 1024, "dtype": "float16",
      "rope_parameters": {"rope_type": "llama3", "rope_theta": 20000.0, "factor": 8.0,
                          "low_freq_factor": 1.0, "high_freq_factor": 4.0}})");
  EXPECT_EQ(new_style.rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(new_style.rope_theta, 20000.0);
  // llama3/yarn default the original length to max_position_embeddings.
  EXPECT_EQ(new_style.rope_scaling.original_max_position_embeddings, 1024);
  EXPECT_EQ(new_style.torch_dtype, DType::kF16);
}

TEST(ModelConfig, QwenAndMistralSpecifics) {
  ModelConfig q2 = parse_hf_config(R"({"architectures": ["Qwen2ForCausalLM"],
      "num_hidden_layers": 4, "use_sliding_window": true, "sliding_window": 32,
      "max_window_layers": 2, "eos_token_id": null})");
  EXPECT_TRUE(q2.attention_bias);
  EXPECT_EQ(q2.sliding_window, 32);
  EXPECT_EQ(q2.layer_uses_sliding_window, (std::vector<bool>{false, false, true, true}));
  EXPECT_TRUE(q2.eos_token_ids.empty());
  EXPECT_EQ(q2.bos_token_id, -1);

  ModelConfig q2_off = parse_hf_config(R"({"architectures": ["Qwen2ForCausalLM"],
      "sliding_window": 32, "use_sliding_window": false})");
  EXPECT_EQ(q2_off.sliding_window, 0);

  ModelConfig q3 = parse_hf_config(R"({"architectures": ["Qwen3ForCausalLM"],
      "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2})");
  EXPECT_TRUE(q3.qk_norm);
  EXPECT_FALSE(q3.attention_bias);
  EXPECT_EQ(q3.head_dim, 128);  // Qwen3Config's default, not hidden / heads

  ModelConfig mistral = parse_hf_config(R"({"architectures": ["MistralForCausalLM"],
      "sliding_window": null, "head_dim": null, "hidden_size": 128, "num_attention_heads": 8})");
  EXPECT_EQ(mistral.sliding_window, 0);
  EXPECT_EQ(mistral.head_dim, 16);
  EXPECT_EQ(mistral.num_key_value_heads, 8);
  ModelConfig mistral_default = parse_hf_config(R"({"architectures": ["MistralForCausalLM"]})");
  EXPECT_EQ(mistral_default.sliding_window, 4096);
}

TEST(ModelConfig, UnsupportedArchitectureNamesSupportedOnes) {
  try {
    parse_hf_config(R"({"architectures": ["GPT2LMHeadModel"]})");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("unsupported architecture GPT2LMHeadModel"), std::string::npos) << msg;
    EXPECT_NE(msg.find("Qwen3ForCausalLM"), std::string::npos) << msg;
  }
  EXPECT_THROW(parse_hf_config("{not json"), Error);
}

TEST(Rope, DefaultLinearAndTable) {
  ModelConfig c;
  c.head_dim = 8;
  c.rope_theta = 10000.0;
  RopeFrequencies f = compute_rope_frequencies(c);
  ASSERT_EQ(f.inv_freq.size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(f.inv_freq[i], std::pow(10000.0, -2.0 * i / 8), 1e-7);
  c.rope_scaling.type = "linear";
  c.rope_scaling.factor = 4.0;
  RopeFrequencies lin = compute_rope_frequencies(c);
  for (int i = 0; i < 4; ++i) EXPECT_FLOAT_EQ(lin.inv_freq[i], f.inv_freq[i] / 4.0f);

  c.rope_scaling.type = "default";
  c.max_position_embeddings = 16;
  RopeCache cache(c);
  cache.ensure(40);
  ASSERT_GE(cache.cos_sin().size(0), 40);
  const float* row = cache.cos_sin().data<float>() + 37 * 8;
  EXPECT_NEAR(row[1], std::cos(37.0 * f.inv_freq[1]), 1e-5);
  EXPECT_NEAR(row[4 + 1], std::sin(37.0 * f.inv_freq[1]), 1e-5);
}

TEST(Rope, Llama3KeepsHighAndScalesLowFrequencies) {
  ModelConfig c;
  c.head_dim = 64;
  c.rope_theta = 500000.0;
  c.rope_scaling.type = "llama3";
  c.rope_scaling.factor = 8.0;
  c.rope_scaling.original_max_position_embeddings = 8192;
  RopeFrequencies f = compute_rope_frequencies(c);
  c.rope_scaling.type = "default";
  RopeFrequencies base = compute_rope_frequencies(c);
  EXPECT_FLOAT_EQ(f.inv_freq[0], base.inv_freq[0]);                 // wavelength 2 pi: kept
  EXPECT_FLOAT_EQ(f.inv_freq.back(), base.inv_freq.back() / 8.0f);  // longest: divided
  EXPECT_FLOAT_EQ(f.attention_scaling, 1.0f);
}

TEST(Rope, YarnAttentionFactor) {
  ModelConfig c;
  c.head_dim = 32;
  c.max_position_embeddings = 4096;
  c.rope_scaling.type = "yarn";
  c.rope_scaling.factor = 4.0;
  c.rope_scaling.original_max_position_embeddings = 1024;
  RopeFrequencies f = compute_rope_frequencies(c);
  EXPECT_NEAR(f.attention_scaling, 0.1 * std::log(4.0) + 1.0, 1e-6);
}

}  // namespace
}  // namespace fastlm::model
