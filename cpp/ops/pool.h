#pragma once
// Pooling ops (ops/pool.cc): hidden states -> one vector per sequence, on the device that holds
// them, and the activation / normalization of pooled rows.
#include <cstdint>

#include "core/exec_context.h"
#include "core/tensor.h"

namespace fastlm::ops {

// How a sequence's rows pool into one vector (the engine maps sched::PoolingType onto these;
// ALL pooling keeps every row and needs no op).
enum class PoolMethod : int32_t { kCls = 0, kMean = 1, kLast = 2 };
// What a pooled row goes through after the (optional) head, in place.
enum class PoolActivation : int32_t { kNone = 0, kSoftmax = 1, kSigmoid = 2 };

// pooled[s] = hidden's rows [qsl[s], qsl[s+1]) pooled by methods[s] (PoolMethod as int32; MEAN
// accumulates in double). hidden [T, H] float32; query_start_loc [S + 1] int32 with non-empty
// sequences (validated by the host); methods [S] int32; pooled [S, H] float32.
void pool(ExecContext& ctx, const Tensor& hidden, const Tensor& query_start_loc,
          const Tensor& methods, Tensor& pooled);

// Per row r of x [R, W] float32, in place: activations[r] (PoolActivation as int32), then, where
// normalize[r] != 0, x / max(||x||_2, 1e-12) (torch.nn.functional.normalize). [R] int32 each.
void pool_finish(ExecContext& ctx, Tensor& x, const Tensor& activations, const Tensor& normalize);

}  // namespace fastlm::ops
