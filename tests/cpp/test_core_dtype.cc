// DType: sizes, names, parsing, and the f32 <-> bf16 / f16 scalar conversions (round to
// nearest even, NaN and infinity preserved, f16 subnormals and overflow).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>

#include "core/dtype.h"
#include "core/status.h"
#include "core/tensor.h"

namespace fastlm {
namespace {

float from_bits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

TEST(CoreDType, SizesAndNamesRoundTrip) {
  const DType all[] = {DType::kF32, DType::kF16, DType::kBF16,
                       DType::kI32, DType::kI64, DType::kU8};
  const size_t sizes[] = {4, 2, 2, 4, 8, 1};
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(dtype_size(all[i]), sizes[i]) << dtype_name(all[i]);
  }
  for (DType d : {DType::kF32, DType::kF16, DType::kBF16}) {
    EXPECT_EQ(parse_dtype(dtype_name(d)), d);
  }
  EXPECT_EQ(parse_dtype("fp32"), DType::kF32);
  EXPECT_EQ(parse_dtype("float"), DType::kF32);
  EXPECT_EQ(parse_dtype("bf16"), DType::kBF16);
  EXPECT_EQ(parse_dtype("half"), DType::kF16);
  EXPECT_EQ(parse_dtype("fp16"), DType::kF16);
  EXPECT_THROW(parse_dtype("int8"), Error);
  EXPECT_THROW(parse_dtype("Float32"), Error);
}

TEST(CoreDType, Bf16RoundsToNearestEven) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  // 1 + 2^-8 lies halfway between bf16 1.0 (even) and 1.0078125: ties go to even.
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f808000u)), 0x3f80);
  // 1.0078125 + half an ulp: halfway to 1.015625, whose mantissa is even.
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f818000u)), 0x3f82);
  // Just above halfway rounds up.
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f808001u)), 0x3f81);
  EXPECT_EQ(bf16_to_f32(0xc040), -3.0f);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  // A NaN whose payload sits only in the low bits must not round to infinity.
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(from_bits(0x7f800001u)))));
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(std::numeric_limits<float>::infinity())),
            std::numeric_limits<float>::infinity());
  // Every bf16 value converts to f32 and back unchanged.
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    const float f = bf16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_bf16(f), h) << h;
  }
}

TEST(CoreDType, F16RoundTripsEveryValue) {
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    const float f = f16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      ASSERT_TRUE(std::isnan(f16_to_f32(f32_to_f16(f)))) << h;
      continue;
    }
    ASSERT_EQ(f32_to_f16(f), h) << h;
  }
}

TEST(CoreDType, F16EdgeCases) {
  EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_f32(0x7bff), 65504.0f);               // largest finite
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(f32_to_f16(70000.0f), 0x7c00);               // overflow -> +inf
  EXPECT_EQ(f32_to_f16(-70000.0f), 0xfc00);              // -> -inf
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -26)), 0x0000);  // below half the smallest: 0
  EXPECT_EQ(f32_to_f16(std::ldexp(3.0f, -26)), 0x0001);  // rounds up to the smallest
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
  // 1 + 2^-11 is halfway between 1 and the next f16: ties to even (1.0).
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  EXPECT_EQ(f32_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
}

TEST(CoreDType, ConvertDtypeMatchesScalarConversions) {
  const float src[5] = {0.1f, -7.3f, 1e-6f, 3.0e4f, -0.0f};
  uint16_t bf[5], hf[5];
  float back[5];
  convert_dtype(src, DType::kF32, bf, DType::kBF16, 5);
  convert_dtype(src, DType::kF32, hf, DType::kF16, 5);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(bf[i], f32_to_bf16(src[i]));
    EXPECT_EQ(hf[i], f32_to_f16(src[i]));
  }
  uint16_t bf_from_hf[5];
  convert_dtype(hf, DType::kF16, bf_from_hf, DType::kBF16, 5);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(bf_from_hf[i], f32_to_bf16(f16_to_f32(hf[i])));
  convert_dtype(bf, DType::kBF16, back, DType::kF32, 5);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(back[i], bf16_to_f32(bf[i]));
  int32_t ints[5] = {};
  EXPECT_THROW(convert_dtype(ints, DType::kI32, back, DType::kF32, 5), Error);
}

// Every bf16 value h with each interesting low half (exact, below/at/above the halfway point,
// all ones): the result is the nearest bf16, ties to the even mantissa, NaN stays NaN (quiet),
// and the largest finite values round to infinity only from the halfway point up.
TEST(CoreDType, Bf16RoundingOverEveryHighHalf) {
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    for (uint32_t low : {0x0000u, 0x0001u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu}) {
      const uint32_t bits = (h << 16) | low;
      const uint16_t got = f32_to_bf16(from_bits(bits));
      const bool nan = (bits & 0x7fffffffu) > 0x7f800000u;
      if (nan) {
        ASSERT_TRUE(std::isnan(bf16_to_f32(got))) << std::hex << bits;
        ASSERT_EQ(got & 0x8000u, h & 0x8000u) << std::hex << bits;  // sign kept
        continue;
      }
      const bool inf = (bits & 0x7fffffffu) == 0x7f800000u;
      uint32_t want = h;
      if (!inf && (low > 0x8000u || (low == 0x8000u && (h & 1u)))) want = h + 1;
      ASSERT_EQ(got, want) << std::hex << bits;
    }
  }
  // Subnormal f32 inputs round like any other (bf16 keeps f32's exponent range).
  EXPECT_EQ(f32_to_bf16(from_bits(0x00008000u)), 0x0000);  // tie, even
  EXPECT_EQ(f32_to_bf16(from_bits(0x00018000u)), 0x0002);  // tie, odd -> up
  EXPECT_EQ(f32_to_bf16(from_bits(0x7f7fffffu)), 0x7f80);  // max float rounds to inf
}

// f32 -> f16 near the subnormal boundary and the top of the range, against exact arithmetic.
TEST(CoreDType, F16SubnormalsTiesAndOverflow) {
  const float ulp_sub = std::ldexp(1.0f, -24);  // f16's smallest subnormal
  for (int m = 0; m < 1024; ++m) {
    // Halfway between subnormals m and m+1: ties to the even one.
    const float tie = (static_cast<float>(m) + 0.5f) * ulp_sub;
    const uint16_t want = static_cast<uint16_t>((m & 1) ? m + 1 : m);
    ASSERT_EQ(f32_to_f16(tie), want) << m;
    ASSERT_EQ(f32_to_f16(-tie), want | 0x8000u) << m;
  }
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -14)), 0x0400);  // smallest normal
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65519.0f), 0x7bff);  // below the halfway point to 65536
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);  // the halfway point rounds (to even) to inf
  EXPECT_EQ(f32_to_f16(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(f32_to_f16(-std::numeric_limits<float>::infinity()), 0xfc00);
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(from_bits(0x7f800001u)))));  // low payload
  EXPECT_EQ(f32_to_f16(std::numeric_limits<float>::denorm_min()), 0x0000);
}

TEST(CoreDType, DeviceNames) {
  EXPECT_STREQ(device_name(Device::kCPU), "cpu");
  EXPECT_STREQ(device_name(Device::kCUDA), "cuda");
}

}  // namespace
}  // namespace fastlm
