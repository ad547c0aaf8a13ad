#pragma once
// Typed body of ops::write_kv. C is the cache dtype (f32 or bf16).
#include <cstdint>

#include "core/dtype.h"

namespace fastlm::cpu {

// Token i's row of `width` = Hk*D floats goes to cache row slot_mapping[i] (rows of the
// [num_blocks * block_size, Hk*D] view); negative slots are skipped.
template <DType C>
void write_kv(const float* k, const float* v, void* k_cache, void* v_cache,
              const int64_t* slot_mapping, int64_t t, int64_t width);

}  // namespace fastlm::cpu
