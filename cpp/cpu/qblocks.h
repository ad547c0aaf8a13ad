#pragma once
// Scalar block codecs of the packed weight formats (core/qtype.h): dequantization (GGUF load
// fallback, embedding rows, test references) and quantization of float rows (--quantization).
#include <cstdint>

#include "core/qtype.h"

namespace fastlm::cpu {

// n elements (a multiple of the block size) of packed blocks at src -> float32 at dst.
void dequantize_blocks(QType type, const void* src, float* dst, int64_t n);

// Formats quantize_blocks writes (the --quantization targets and their Q4_1 / Q8_0 relatives).
bool can_quantize(QType type);
// n floats (a multiple of 32) -> packed blocks at dst, round to nearest as ggml's reference
// quantizers (Q8_0: d = amax / 127; Q4_0: d = max / -8 with the signed extreme; Q4_1: d =
// (max - min) / 15, m = min).
void quantize_blocks(QType type, const float* src, void* dst, int64_t n);

}  // namespace fastlm::cpu
