#include "model/gguf_dequant.h"

#include <cstring>

#include "core/status.h"
#include "core/tensor.h"
#include "cpu/qblocks.h"

namespace fastlm::model {

bool ggml_type_supported(uint32_t id) {
  switch (id) {
    case 0:
    case 1:
    case 2:
    case 3:
    case 6:
    case 7:
    case 8:
    case 12:
    case 13:
    case 14:
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
    case GgmlType::kBF16:
      return "BF16";
  }
  return "?";
}

int64_t ggml_block_elems(GgmlType type) {
  const std::optional<QType> q = ggml_qtype(type);
  return q ? qtype_block_elems(*q) : 1;
}

size_t ggml_block_bytes(GgmlType type) {
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
      return cpu::dequantize_blocks(*ggml_qtype(type), src, dst, n);
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
  }
  return std::nullopt;
}

}  // namespace fastlm::model
