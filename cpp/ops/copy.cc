// Data-movement ops (no host loops in a model's forward): column slices of a fused projection,
// row gathers, elementwise add, RoBERTa position ids.
#include "cpu/copy_cpu.h"
#include "ops/dispatch.h"
#include "ops/op_checks.h"
#include "ops/ops.h"

namespace fastlm::ops {

void copy_columns(ExecContext& ctx, const Tensor& src, int64_t col, Tensor& dst) {
  using namespace detail;
  const char* op = "copy_columns";
  check_dim(op, "src", src, 2);
  check_tensor(op, "dst", dst, 2, src.dtype());
  const int64_t t = src.size(0), n = dst.size(1);
  FASTLM_CHECK_ARG(dst.size(0) == t && col >= 0 && col + n <= src.size(1), op, ": columns [", col,
                   ", ", col + n, ") of ", src.shape_str(), " do not fit ", dst.shape_str());
  check_device(ctx, op, {&src, &dst});
  dispatch(ctx, op, Axis<F32Only>{src.dtype(), "src"}, [&](auto device, auto) {
    if constexpr (is_cpu<decltype(device)>) {
      cpu::copy_columns(src.data<float>(), src.size(1), col, dst.data<float>(), t, n);
    } else {
      no_kernel(device, op);
    }
  });
}

void gather_rows(ExecContext& ctx, const Tensor& src, const Tensor& indices, Tensor& dst) {
  using namespace detail;
  const char* op = "gather_rows";
  check_dim(op, "src", src, 2);
  check_tensor(op, "indices", indices, 1, DType::kI32);
  check_tensor(op, "dst", dst, 2, src.dtype());
  FASTLM_CHECK_ARG(dst.size(0) == indices.size(0) && dst.size(1) == src.size(1), op, ": dst ",
                   dst.shape_str(), " must be [", indices.size(0), ", ", src.size(1), "]");
  check_device(ctx, op, {&src, &indices, &dst});
  dispatch(ctx, op, [&](auto device) {
    if constexpr (is_cpu<decltype(device)>) {
      const int64_t row_bytes = src.size(1) * static_cast<int64_t>(dtype_size(src.dtype()));
      cpu::gather_rows(src.data(), row_bytes, indices.data<int32_t>(), indices.size(0), dst.data());
    } else {
      no_kernel(device, op);
    }
  });
}

void add(ExecContext& ctx, Tensor& x, const Tensor& y) {
  using namespace detail;
  const char* op = "add";
  check_defined(op, "x", x);
  check_dtype(op, "y", y, x.dtype());
  FASTLM_CHECK_ARG(x.shape() == y.shape(), op, ": x ", x.shape_str(), " and y ", y.shape_str(),
                   " differ");
  check_device(ctx, op, {&x, &y});
  dispatch(ctx, op, Axis<F32Only>{x.dtype(), "x"}, [&](auto device, auto) {
    if constexpr (is_cpu<decltype(device)>) {
      cpu::add(x.data<float>(), y.data<float>(), x.numel());
    } else {
      no_kernel(device, op);
    }
  });
}

void roberta_positions(ExecContext& ctx, const Tensor& token_ids, const Tensor& query_start_loc,
                       int32_t pad_token_id, Tensor& positions) {
  using namespace detail;
  const char* op = "roberta_positions";
  check_tensor(op, "token_ids", token_ids, 1, DType::kI32);
  check_tensor(op, "query_start_loc", query_start_loc, 1, DType::kI32);
  check_tensor(op, "positions", positions, 1, DType::kI32);
  FASTLM_CHECK_ARG(positions.size(0) == token_ids.size(0) && query_start_loc.size(0) >= 1, op,
                   ": positions ", positions.shape_str(), " must match token_ids ",
                   token_ids.shape_str());
  check_device(ctx, op, {&token_ids, &query_start_loc, &positions});
  dispatch(ctx, op, [&](auto device) {
    if constexpr (is_cpu<decltype(device)>) {
      cpu::roberta_positions(token_ids.data<int32_t>(), query_start_loc.data<int32_t>(),
                             static_cast<int>(query_start_loc.size(0)) - 1, pad_token_id,
                             positions.data<int32_t>());
    } else {
      no_kernel(device, op);
    }
  });
}

}  // namespace fastlm::ops
