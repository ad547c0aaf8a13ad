#pragma once
// Element types and the scalar conversions every kernel needs.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace fastlm {

enum class DType : uint8_t { kF32, kF16, kBF16, kI32, kI64, kU8 };

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);
// Parses "float32"/"fp32"/"float", "bfloat16"/"bf16", "float16"/"fp16"/"half".
DType parse_dtype(const std::string& name);

inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// Round to nearest even, as torch does; NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

}  // namespace fastlm
