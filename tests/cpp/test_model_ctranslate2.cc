// The CTranslate2 model.bin reader on small files the test writes: variables of each float
// dtype as views with their shapes, integer scalars, aliases, quantized variables refused, and
// truncated / unsupported / inconsistent files rejected.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/status.h"
#include "model/ctranslate2.h"

namespace fastlm::model {
namespace {

// model.bin bytes: little-endian numbers, u16-length strings counting their NUL.
class Writer {
 public:
  template <typename T>
  Writer& num(T v) {
    const auto* p = reinterpret_cast<const char*>(&v);
    bytes_.append(p, sizeof(T));
    return *this;
  }
  Writer& str(const std::string& s) {
    num<uint16_t>(static_cast<uint16_t>(s.size() + 1));
    bytes_.append(s);
    bytes_.push_back('\0');
    return *this;
  }
  // One variable: name, shape, dtype code, then `data` (its byte count first).
  Writer& var(const std::string& name, const std::vector<uint32_t>& shape, uint8_t dtype,
              const std::string& data) {
    str(name).num<uint8_t>(static_cast<uint8_t>(shape.size()));
    for (uint32_t d : shape) num(d);
    num(dtype).num<uint32_t>(static_cast<uint32_t>(data.size()));
    bytes_.append(data);
    return *this;
  }
  const std::string& bytes() const { return bytes_; }

 private:
  std::string bytes_;
};

template <typename T>
std::string raw(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

std::string write_folder(const std::string& name, const std::string& bytes) {
  const auto dir =
      std::filesystem::temp_directory_path() / (name + "_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "model.bin", std::ios::binary) << bytes;
  return dir.string();
}

std::string model_bin(uint32_t version = 6) {
  Writer w;
  w.num<uint32_t>(version).str("WhisperSpec").num<uint32_t>(3).num<uint32_t>(5);
  w.var("encoder/conv1/weight", {2, 3}, 0, raw(std::vector<float>{1, 2, 3, 4, 5, 6}));
  w.var("decoder/embeddings/weight", {2}, 4, raw(std::vector<uint16_t>{0x3c00, 0xc000}));
  w.var("decoder/bias", {1, 2}, 5, raw(std::vector<uint16_t>{0x3f80, 0x4040}));
  w.var("encoder/num_heads", {}, 3, raw(std::vector<int32_t>{6}));
  w.var("decoder/quantized", {4}, 1, raw(std::vector<int8_t>{1, -2, 3, -4}));
  w.num<uint32_t>(1).str("decoder/tied").str("decoder/embeddings/weight");
  return w.bytes();
}

TEST(Ctranslate2, ReadsVariablesScalarsAndAliases) {
  const std::string dir = write_folder("fastlm_ct2_ok", model_bin());
  ASSERT_TRUE(is_ctranslate2_folder(dir));
  Ctranslate2Source src(dir);
  EXPECT_EQ(src.spec_name(), "WhisperSpec");
  const Tensor conv = src.get("encoder/conv1/weight");
  ASSERT_EQ(conv.shape(), (std::vector<int64_t>{2, 3}));
  ASSERT_EQ(conv.dtype(), DType::kF32);
  EXPECT_EQ(conv.data<float>()[5], 6.0f);
  const Tensor emb = src.get("decoder/embeddings/weight");
  EXPECT_EQ(emb.dtype(), DType::kF16);
  const Tensor f = emb.to(DType::kF32);
  EXPECT_EQ(f.data<float>()[0], 1.0f);
  EXPECT_EQ(f.data<float>()[1], -2.0f);
  const Tensor bias = src.get("decoder/bias").to(DType::kF32);
  EXPECT_EQ(bias.data<float>()[1], 3.0f);
  // The alias reads its target's bytes.
  ASSERT_TRUE(src.has("decoder/tied"));
  EXPECT_EQ(src.get("decoder/tied").data(), src.get("decoder/embeddings/weight").data());
  EXPECT_EQ(src.scalar("encoder/num_heads", 0), 6);
  EXPECT_EQ(src.scalar("decoder/num_heads", -1), -1);
  EXPECT_FALSE(src.has("decoder/missing"));
  EXPECT_THROW(src.get("decoder/missing"), Error);
  EXPECT_THROW(src.get("decoder/quantized"), Error);  // int8 weights: refused, not misread
  EXPECT_THROW(src.scalar("encoder/conv1/weight", 0), Error);
  EXPECT_EQ(src.names().size(), 6u);
}

TEST(Ctranslate2, RejectsBadFiles) {
  const std::string good = model_bin();
  EXPECT_THROW(Ctranslate2Source(write_folder("fastlm_ct2_v2", model_bin(2))), Error);
  for (size_t cut : {good.size() - 3, size_t{20}, size_t{2}}) {
    EXPECT_THROW(Ctranslate2Source(write_folder("fastlm_ct2_cut", good.substr(0, cut))), Error)
        << cut;
  }
  // A variable whose byte count disagrees with its shape.
  Writer w;
  w.num<uint32_t>(6).str("WhisperSpec").num<uint32_t>(3).num<uint32_t>(1);
  w.var("x", {3}, 0, raw(std::vector<float>{1, 2}));
  w.num<uint32_t>(0);
  EXPECT_THROW(Ctranslate2Source(write_folder("fastlm_ct2_size", w.bytes())), Error);
  EXPECT_FALSE(
      is_ctranslate2_folder((std::filesystem::temp_directory_path() / "fastlm_ct2_none").string()));
}

}  // namespace
}  // namespace fastlm::model
