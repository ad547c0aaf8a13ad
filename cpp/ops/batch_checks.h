#pragma once
// Deep validation of index arrays, done once on the host where a batch is built (the engine's
// ModelRunner, the bindings), never inside op entry points (which may run on a device and run
// per layer). Each check reads host tensors and throws InvalidArgument naming the bad entry.
#include <cstdint>

#include "core/tensor.h"
#include "ops/ops.h"

namespace fastlm::ops {

// ids [n] int32 in [0, vocab).
void check_token_ids(const Tensor& ids, int64_t vocab);
// positions [n] int32 in [0, max_pos) (max_pos: the RoPE table's rows).
void check_positions(const Tensor& positions, int64_t max_pos);
// slot_mapping [n] int64 below num_slots (negative = skipped).
void check_slot_mapping(const Tensor& slot_mapping, int64_t num_slots);
// query_start_loc [num_seqs + 1] int32: non-decreasing from 0 to num_tokens.
void check_query_start_loc(const Tensor& query_start_loc, int64_t num_tokens);
// query_start_loc as above; every sequence's context covers its queries and fits its block
// table row; every block the context covers is in [0, num_blocks).
void check_attention_batch(const AttentionBatch& batch, int64_t num_tokens, int64_t num_blocks);

}  // namespace fastlm::ops
