// GGUF parsing, dequantization and llama q/k un-permuting on a small hand-written file.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/status.h"
#include "model/gguf.h"

namespace fastlm::model {
namespace {

class Writer {
 public:
  template <typename T>
  void put(T v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    bytes.insert(bytes.end(), p, p + sizeof(T));
  }
  void str(const std::string& s) {
    put<uint64_t>(s.size());
    bytes.insert(bytes.end(), s.begin(), s.end());
  }
  void kv_u32(const std::string& k, uint32_t v) {
    str(k);
    put<uint32_t>(4);
    put<uint32_t>(v);
  }
  void kv_f32(const std::string& k, float v) {
    str(k);
    put<uint32_t>(6);
    put<float>(v);
  }
  void kv_str(const std::string& k, const std::string& v) {
    str(k);
    put<uint32_t>(8);
    str(v);
  }
  std::vector<uint8_t> bytes;
};

struct TensorSpec {
  std::string name;
  std::vector<uint64_t> ne;
  uint32_t type;
  std::vector<uint8_t> data;
};

std::string write_gguf(const std::vector<TensorSpec>& tensors) {
  Writer w;
  w.put<uint32_t>(0x46554747u);
  w.put<uint32_t>(3);
  w.put<uint64_t>(tensors.size());
  w.put<uint64_t>(10);
  w.kv_str("general.architecture", "llama");
  w.kv_u32("llama.embedding_length", 32);
  w.kv_u32("llama.block_count", 1);
  w.kv_u32("llama.feed_forward_length", 64);
  w.kv_u32("llama.attention.head_count", 2);
  w.kv_u32("llama.attention.head_count_kv", 1);
  w.kv_f32("llama.rope.freq_base", 5000.0f);
  w.kv_u32("tokenizer.ggml.eos_token_id", 1);
  w.kv_u32("general.alignment", 64);
  w.str("tokenizer.ggml.tokens");  // array of 3 strings
  w.put<uint32_t>(9);
  w.put<uint32_t>(8);
  w.put<uint64_t>(3);
  for (const char* t : {"a", "bb", "ccc"}) w.str(t);
  uint64_t offset = 0;
  std::vector<uint64_t> offsets;
  for (const auto& t : tensors) {
    w.str(t.name);
    w.put<uint32_t>(t.ne.size());
    for (uint64_t n : t.ne) w.put<uint64_t>(n);
    w.put<uint32_t>(t.type);
    w.put<uint64_t>(offset);
    offsets.push_back(offset);
    offset += (t.data.size() + 63) / 64 * 64;
  }
  while (w.bytes.size() % 64) w.bytes.push_back(0);
  const size_t start = w.bytes.size();
  w.bytes.resize(start + offset, 0);
  for (size_t i = 0; i < tensors.size(); ++i) {
    std::memcpy(w.bytes.data() + start + offsets[i], tensors[i].data.data(),
                tensors[i].data.size());
  }
  const auto path = std::filesystem::temp_directory_path() /
                    ("fastlm_test_" + std::to_string(::getpid()) + ".gguf");
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(w.bytes.data()), w.bytes.size());
  return path.string();
}

std::vector<uint8_t> f32_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

void put_half(std::vector<uint8_t>& b, float f) {
  const uint16_t h = f32_to_f16(f);
  b.push_back(h & 0xff);
  b.push_back(h >> 8);
}

TEST(Gguf, ParsesDequantizesAndUnpermutes) {
  // Q8_0: one block of 32, d = 0.5, qs = -16..15.
  std::vector<uint8_t> q8;
  put_half(q8, 0.5f);
  for (int i = 0; i < 32; ++i) q8.push_back(static_cast<uint8_t>(static_cast<int8_t>(i - 16)));
  // Q4_0: d = 2, nibbles lo = j % 16, hi = 15 - j % 16.
  std::vector<uint8_t> q40;
  put_half(q40, 2.0f);
  for (int j = 0; j < 16; ++j) q40.push_back(static_cast<uint8_t>(j | ((15 - j) << 4)));
  // Q4_1: d = 0.25, m = -1.
  std::vector<uint8_t> q41;
  put_half(q41, 0.25f);
  put_half(q41, -1.0f);
  for (int j = 0; j < 16; ++j) q41.push_back(static_cast<uint8_t>(j | ((15 - j) << 4)));
  // attn_q: 2 heads x head_dim 16 = 32 rows, 1 column; row r holds r.
  std::vector<float> q_rows(32);
  for (int r = 0; r < 32; ++r) q_rows[r] = static_cast<float>(r);
  const std::string path = write_gguf({
      {"token_embd.weight", {32, 1}, 8, q8},
      {"blk.0.ffn_up.weight", {32, 1}, 2, q40},
      {"blk.0.ffn_gate.weight", {32, 1}, 3, q41},
      {"blk.0.attn_q.weight", {1, 32}, 0, f32_bytes(q_rows)},
      {"rope_freqs.weight", {2}, 0, f32_bytes({1.0f, 2.0f})},
  });

  ModelConfig c;
  auto src = open_gguf(path, &c);
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.hidden_size, 32);
  EXPECT_EQ(c.num_attention_heads, 2);
  EXPECT_EQ(c.num_key_value_heads, 1);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.vocab_size, 3);  // from tokenizer.ggml.tokens
  EXPECT_DOUBLE_EQ(c.rope_theta, 5000.0);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.eos_token_ids, std::vector<int>{1});
  EXPECT_EQ(c.torch_dtype, DType::kBF16);  // not all tensors are F32

  EXPECT_FALSE(src->has("rope_freqs.weight"));
  Tensor embd = src->get("model.embed_tokens.weight");
  ASSERT_EQ(embd.shape(), (std::vector<int64_t>{1, 32}));
  for (int i = 0; i < 32; ++i) EXPECT_FLOAT_EQ(embd.data<float>()[i], 0.5f * (i - 16));
  Tensor up = src->get("model.layers.0.mlp.up_proj.weight");
  for (int j = 0; j < 16; ++j) {
    EXPECT_FLOAT_EQ(up.data<float>()[j], 2.0f * (j - 8));
    EXPECT_FLOAT_EQ(up.data<float>()[j + 16], 2.0f * (15 - j - 8));
  }
  Tensor gate = src->get("model.layers.0.mlp.gate_proj.weight");
  for (int j = 0; j < 16; ++j) {
    EXPECT_FLOAT_EQ(gate.data<float>()[j], 0.25f * j - 1.0f);
    EXPECT_FLOAT_EQ(gate.data<float>()[j + 16], 0.25f * (15 - j) - 1.0f);
  }
  // Un-permute: within each head of 16 rows, new row i * 8 + j comes from old row j * 2 + i.
  Tensor q = src->get("model.layers.0.self_attn.q_proj.weight");
  ASSERT_EQ(q.shape(), (std::vector<int64_t>{32, 1}));
  for (int h = 0; h < 2; ++h) {
    for (int i = 0; i < 2; ++i) {
      for (int j = 0; j < 8; ++j) {
        EXPECT_FLOAT_EQ(q.data<float>()[h * 16 + i * 8 + j], h * 16 + j * 2 + i);
      }
    }
  }
  EXPECT_THROW(src->get("model.layers.0.self_attn.k_proj.weight"), Error);
  std::filesystem::remove(path);
}

TEST(Gguf, RejectsGarbage) {
  const auto path = std::filesystem::temp_directory_path() / "fastlm_test_bad.gguf";
  std::ofstream(path, std::ios::binary) << "GGUFjunk";
  EXPECT_THROW(GgufFile::open(path.string()), Error);
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace fastlm::model
