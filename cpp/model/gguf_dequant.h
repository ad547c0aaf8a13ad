#pragma once
// ggml tensor types and their dequantization to float32 (block layouts as in ggml-common.h).
#include <cstddef>
#include <cstdint>
#include <optional>

#include "core/qtype.h"

namespace fastlm::model {

// Values are the on-disk ggml_type ids.
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kIQ4_NL = 20,
  kIQ4_XS = 23,
  kBF16 = 30,
};

// False for ids this reader does not handle (other quantizations).
bool ggml_type_supported(uint32_t id);
const char* ggml_type_name(GgmlType type);
// Elements per block and bytes per block (1 and the element size for float types).
int64_t ggml_block_elems(GgmlType type);
size_t ggml_block_bytes(GgmlType type);
// Bytes n elements take; n must be a multiple of the block size.
size_t ggml_row_bytes(GgmlType type, int64_t n);

// Dequantizes n elements (a multiple of the block size) starting at src into dst.
void dequantize(GgmlType type, const void* src, float* dst, int64_t n);
// The packed format of a quantized ggml type: its own, or for Q2_K (no packed kernels yet)
// Q8_0, which it is quantized again to at load; nullopt for the float types.
std::optional<QType> ggml_qtype(GgmlType type);
// True for the types whose blocks are rewritten into ggml_qtype(type)'s layout at load (Q2_K).
bool ggml_transcoded(GgmlType type);
// Rewrites n elements (a multiple of the block size) of a transcoded type from src into dst, in
// ggml_qtype(type)'s block layout (Q2_K: each 32 values quantized again as a Q8_0 block).
void transcode(GgmlType type, const void* src, void* dst, int64_t n);

}  // namespace fastlm::model
