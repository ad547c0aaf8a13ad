#pragma once
// Block-quantized weight formats (ggml's block layouts, as GGUF files store them) and the matrix
// operand of linear / embedding that holds either dense float weights or packed blocks.
// A packed [rows, cols] matrix is `rows` rows of cols / block_elems blocks each; rows are
// contiguous, so a row range is a byte range (threads split rows, fused matrices concatenate).
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace fastlm {

enum class QType : uint8_t {
  kQ4_0,
  kQ4_1,
  kQ5_0,
  kQ5_1,
  kQ8_0,
  kQ4_K,
  kQ5_K,
  kQ6_K,
  kQ3_K,
  kIQ4_NL,
  kIQ4_XS
};

// Elements per block: 32 for the legacy formats, 256 for the K-quant super-blocks.
inline int64_t qtype_block_elems(QType t) {
  switch (t) {
    case QType::kQ4_0:
    case QType::kQ4_1:
    case QType::kQ5_0:
    case QType::kQ5_1:
    case QType::kQ8_0:
    case QType::kIQ4_NL:
      return 32;
    case QType::kQ4_K:
    case QType::kQ5_K:
    case QType::kQ6_K:
    case QType::kQ3_K:
    case QType::kIQ4_XS:
      return 256;
  }
  return 0;
}

// Bytes per block: Q4_0 {f16 d; u8 qs[16]}, Q4_1 {f16 d, m; u8 qs[16]}, Q5_0 {f16 d; u8 qh[4];
// u8 qs[16]}, Q5_1 {f16 d, m; u8 qh[4]; u8 qs[16]}, Q8_0 {f16 d; i8 qs[32]}, Q4_K {f16 d, dmin;
// u8 scales[12]; u8 qs[128]}, Q5_K {.. Q4_K; u8 qh[32] before qs}, Q6_K {u8 ql[128]; u8 qh[64];
// i8 scales[16]; f16 d}, Q3_K {u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d}, IQ4_NL {f16 d;
// u8 qs[16]}, IQ4_XS {f16 d; u16 scales_h; u8 scales_l[4]; u8 qs[128]}.
inline size_t qtype_block_bytes(QType t) {
  switch (t) {
    case QType::kQ4_0:
      return 18;
    case QType::kQ4_1:
      return 20;
    case QType::kQ5_0:
      return 22;
    case QType::kQ5_1:
      return 24;
    case QType::kQ8_0:
      return 34;
    case QType::kQ4_K:
      return 144;
    case QType::kQ5_K:
      return 176;
    case QType::kQ6_K:
      return 210;
    case QType::kQ3_K:
      return 110;
    case QType::kIQ4_NL:
      return 18;
    case QType::kIQ4_XS:
      return 136;
  }
  return 0;
}

inline const char* qtype_name(QType t) {
  switch (t) {
    case QType::kQ4_0:
      return "q4_0";
    case QType::kQ4_1:
      return "q4_1";
    case QType::kQ5_0:
      return "q5_0";
    case QType::kQ5_1:
      return "q5_1";
    case QType::kQ8_0:
      return "q8_0";
    case QType::kQ4_K:
      return "q4_k";
    case QType::kQ5_K:
      return "q5_k";
    case QType::kQ6_K:
      return "q6_k";
    case QType::kQ3_K:
      return "q3_k";
    case QType::kIQ4_NL:
      return "iq4_nl";
    case QType::kIQ4_XS:
      return "iq4_xs";
  }
  return "?";
}

// Bytes of one packed row of `cols` elements (cols a multiple of the block size).
inline size_t qtype_row_bytes(QType t, int64_t cols) {
  return static_cast<size_t>(cols / qtype_block_elems(t)) * qtype_block_bytes(t);
}

// The weight operand of ops::linear and ops::embedding: [rows, cols] as a dense float tensor
// (f32 / bf16), or as packed blocks of `qtype` in a uint8 tensor [rows, row_bytes] (an mmapped
// view of a GGUF file, or owned memory when rows were fused or quantized at load), or (linear
// only) as packed matrices of different formats stacked by rows: a fused projection whose
// parts a GGUF file stores in different formats (Q4_K_M's q and k at Q4_K, v at Q6_K).
struct Weight {
  Tensor dense;
  Tensor packed;
  QType qtype = QType::kQ8_0;
  int64_t rows = 0, cols = 0;
  // Stacked: parts[i] (packed) gives the next parts[i].rows output features; empty otherwise.
  std::vector<Weight> parts;

  static Weight of(Tensor t) {
    Weight w;
    w.rows = t.dim() == 2 ? t.size(0) : 0;
    w.cols = t.dim() == 2 ? t.size(1) : 0;
    w.dense = std::move(t);
    return w;
  }
  static Weight quantized(QType type, Tensor bytes, int64_t rows, int64_t cols) {
    Weight w;
    w.qtype = type;
    w.packed = std::move(bytes);
    w.rows = rows;
    w.cols = cols;
    return w;
  }
  static Weight stacked(std::vector<Weight> parts) {
    Weight w;
    for (const Weight& p : parts) w.rows += p.rows;
    w.cols = parts.empty() ? 0 : parts[0].cols;
    w.parts = std::move(parts);
    return w;
  }
  bool is_packed() const { return packed.defined(); }
  bool is_stacked() const { return !parts.empty(); }
  bool defined() const { return dense.defined() || packed.defined() || is_stacked(); }
  size_t nbytes() const {
    if (!is_stacked()) return is_packed() ? packed.nbytes() : dense.nbytes();
    size_t n = 0;
    for (const Weight& p : parts) n += p.nbytes();
    return n;
  }
};

}  // namespace fastlm
