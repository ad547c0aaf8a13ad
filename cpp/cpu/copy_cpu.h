#pragma once
// Typed bodies of the data-movement ops: column slices, row gathers, elementwise add, and
// RoBERTa's position ids.
#include <cstdint>

namespace fastlm::cpu {

// dst[t, :n] = src[t, col : col + n] (src rows of src_cols floats).
void copy_columns(const float* src, int64_t src_cols, int64_t col, float* dst, int64_t t,
                  int64_t n);
// dst[i] = src[idx[i]] for rows of row_bytes bytes.
void gather_rows(const void* src, int64_t row_bytes, const int32_t* idx, int64_t n, void* dst);
// x[i] += y[i].
void add(float* x, const float* y, int64_t n);
// Per sequence s (rows [qsl[s], qsl[s+1])): non-pad tokens count from pad + 1, pads sit at pad.
void roberta_positions(const int32_t* ids, const int32_t* qsl, int num_seqs, int32_t pad,
                       int32_t* out);

}  // namespace fastlm::cpu
