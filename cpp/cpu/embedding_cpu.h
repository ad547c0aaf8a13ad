#pragma once
// Typed body of ops::embedding. T is the table dtype; ids are already range-checked.
#include <cstdint>

#include "core/dtype.h"

namespace fastlm::cpu {

template <DType T>
void embedding(const void* table, int64_t hidden, const int32_t* ids, int64_t n, float* out);

}  // namespace fastlm::cpu
