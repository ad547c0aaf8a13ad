#include "model/gguf_dequant.h"

#include <cstring>

#include "core/dtype.h"
#include "core/status.h"
#include "core/tensor.h"
#include "cpu/qblocks.h"

namespace fastlm::model {

namespace {

// Q2_K {u8 scales[16] (per 16 elements: scale in the low nibble, minimum in the high); u8 qs[64];
// f16 d, dmin} (ggml-common.h's block_q2_K): w = d * scale * q - dmin * min, q in 0..3; element
// e of a 256-block takes q from qs[32 (e / 128) + e % 32] >> 2 ((e % 128) / 32), its scale and
// minimum from entry e / 16. No packed kernels yet: quantized again to Q8_0 at load.
constexpr int64_t kQK_K = 256;
constexpr size_t kQ2KBytes = 84, kQ8_0Bytes = 34;

int low2(const uint8_t* qs, int e) {
  return (qs[32 * (e / 128) + e % 32] >> (2 * (e % 128 / 32))) & 3;
}

float half_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

void dequantize_q2k(const uint8_t* src, float* dst, int64_t n) {
  for (int64_t b = 0; b < n / kQK_K; ++b, src += kQ2KBytes, dst += kQK_K) {
    const float d = half_at(src + 80), dmin = half_at(src + 82);
    for (int e = 0; e < kQK_K; ++e) {
      const uint8_t sc = src[e / 16];
      const float dl = d * static_cast<float>(sc & 0x0f);
      const float ml = dmin * static_cast<float>(sc >> 4);
      dst[e] = dl * static_cast<float>(low2(src + 16, e)) - ml;
    }
  }
}

}  // namespace

bool ggml_type_supported(uint32_t id) {
  switch (id) {
    case 0:
    case 1:
    case 2:
    case 3:
    case 6:
    case 7:
    case 8:
    case 10:
    case 11:
    case 12:
    case 13:
    case 14:
    case 20:
    case 23:
    case 30:
      return true;
    default:  // an open set of on-disk ids, not our enum
      return false;
  }
}

const char* ggml_type_name(GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
      return "F32";
    case GgmlType::kF16:
      return "F16";
    case GgmlType::kQ4_0:
      return "Q4_0";
    case GgmlType::kQ4_1:
      return "Q4_1";
    case GgmlType::kQ5_0:
      return "Q5_0";
    case GgmlType::kQ5_1:
      return "Q5_1";
    case GgmlType::kQ8_0:
      return "Q8_0";
    case GgmlType::kQ4_K:
      return "Q4_K";
    case GgmlType::kQ5_K:
      return "Q5_K";
    case GgmlType::kQ6_K:
      return "Q6_K";
    case GgmlType::kQ2_K:
      return "Q2_K";
    case GgmlType::kQ3_K:
      return "Q3_K";
    case GgmlType::kIQ4_NL:
      return "IQ4_NL";
    case GgmlType::kIQ4_XS:
      return "IQ4_XS";
    case GgmlType::kBF16:
      return "BF16";
  }
  return "?";
}

int64_t ggml_block_elems(GgmlType type) {
  if (type == GgmlType::kQ2_K) return kQK_K;
  const std::optional<QType> q = ggml_qtype(type);
  return q ? qtype_block_elems(*q) : 1;
}

size_t ggml_block_bytes(GgmlType type) {
  if (type == GgmlType::kQ2_K) return kQ2KBytes;
  if (const std::optional<QType> q = ggml_qtype(type)) return qtype_block_bytes(*q);
  return type == GgmlType::kF32 ? 4 : 2;  // F16, BF16
}

size_t ggml_row_bytes(GgmlType type, int64_t n) {
  const int64_t be = ggml_block_elems(type);
  FASTLM_CHECK(n % be == 0, ggml_type_name(type), " tensor row of ", n,
               " elements is not a multiple of the block size ", be);
  return static_cast<size_t>(n / be) * ggml_block_bytes(type);
}

void dequantize(GgmlType type, const void* src, float* dst, int64_t n) {
  switch (type) {
    case GgmlType::kF32:
      std::memcpy(dst, src, n * sizeof(float));
      return;
    case GgmlType::kF16:
      convert_dtype(src, DType::kF16, dst, DType::kF32, n);
      return;
    case GgmlType::kBF16:
      convert_dtype(src, DType::kBF16, dst, DType::kF32, n);
      return;
    case GgmlType::kQ4_0:
    case GgmlType::kQ4_1:
    case GgmlType::kQ5_0:
    case GgmlType::kQ5_1:
    case GgmlType::kQ8_0:
    case GgmlType::kQ4_K:
    case GgmlType::kQ5_K:
    case GgmlType::kQ6_K:
    case GgmlType::kQ3_K:
    case GgmlType::kIQ4_NL:
    case GgmlType::kIQ4_XS:
      return cpu::dequantize_blocks(*ggml_qtype(type), src, dst, n);
    case GgmlType::kQ2_K:
      return dequantize_q2k(static_cast<const uint8_t*>(src), dst, n);
  }
}

bool ggml_transcoded(GgmlType type) { return type == GgmlType::kQ2_K; }

void transcode(GgmlType type, const void* src, void* dst, int64_t n) {
  const auto* s = static_cast<const uint8_t*>(src);
  auto* d = static_cast<uint8_t*>(dst);
  FASTLM_CHECK(ggml_transcoded(type), ggml_type_name(type), " is not transcoded");
  FASTLM_CHECK(n % kQK_K == 0, "transcode: ", n, " elements of ", ggml_type_name(type),
               " is not a whole number of blocks");
  float values[kQK_K];
  for (int64_t b = 0; b < n / kQK_K; ++b) {
    dequantize_q2k(s + b * kQ2KBytes, values, kQK_K);
    cpu::quantize_blocks(QType::kQ8_0, values, d + b * 8 * kQ8_0Bytes, kQK_K);
  }
}

std::optional<QType> ggml_qtype(GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kBF16:
      return std::nullopt;
    case GgmlType::kQ4_0:
      return QType::kQ4_0;
    case GgmlType::kQ4_1:
      return QType::kQ4_1;
    case GgmlType::kQ5_0:
      return QType::kQ5_0;
    case GgmlType::kQ5_1:
      return QType::kQ5_1;
    case GgmlType::kQ8_0:
      return QType::kQ8_0;
    case GgmlType::kQ4_K:
      return QType::kQ4_K;
    case GgmlType::kQ5_K:
      return QType::kQ5_K;
    case GgmlType::kQ6_K:
      return QType::kQ6_K;
    case GgmlType::kQ3_K:
      return QType::kQ3_K;
    case GgmlType::kIQ4_NL:
      return QType::kIQ4_NL;
    case GgmlType::kIQ4_XS:
      return QType::kIQ4_XS;
    case GgmlType::kQ2_K:
      return QType::kQ8_0;
  }
  return std::nullopt;
}

}  // namespace fastlm::model
