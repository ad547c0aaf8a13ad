#include "fastlm_cuda/host/kv_sizing.h"

#include <cmath>

#include "core/status.h"

namespace fastlm::cuda {

namespace {
double gib(double bytes) { return bytes / (1024.0 * 1024.0 * 1024.0); }
}  // namespace

KvSizing size_kv_cache(const KvSizingInput& in) {
  FASTLM_CHECK_ARG(in.gpu_memory_utilization > 0.0 && in.gpu_memory_utilization <= 1.0,
                   "gpu_memory_utilization must be in (0, 1], got ", in.gpu_memory_utilization);
  FASTLM_CHECK_ARG(in.bytes_per_block > 0 && in.block_size > 0 && in.max_model_len > 0,
                   "KV sizing needs bytes_per_block, block_size and max_model_len > 0");
  FASTLM_CHECK_ARG(in.free_bytes_at_start <= in.total_bytes, "free memory exceeds total memory");
  const double requested =
      std::floor(static_cast<double>(in.total_bytes) * in.gpu_memory_utilization);
  FASTLM_CHECK_ARG(requested <= static_cast<double>(in.free_bytes_at_start),
                   "free memory on the device (", gib(in.free_bytes_at_start),
                   " GiB) is less than "
                   "the desired GPU memory utilization (",
                   in.gpu_memory_utilization, ", ", gib(requested),
                   " GiB); lower --gpu-memory-utilization");
  const double used = static_cast<double>(in.weights_bytes) +
                      static_cast<double>(in.peak_activation_bytes) +
                      static_cast<double>(in.other_bytes);
  const double remaining = requested - used;
  const double one_seq_blocks =
      std::ceil(static_cast<double>(in.max_model_len) / static_cast<double>(in.block_size));
  FASTLM_CHECK_ARG(remaining >= static_cast<double>(in.bytes_per_block),
                   "no memory left for the KV cache: ", gib(requested), " GiB allowed (",
                   in.gpu_memory_utilization, " of ", gib(in.total_bytes), " GiB), weights ",
                   gib(in.weights_bytes), " GiB, activations ", gib(in.peak_activation_bytes),
                   " GiB, other ", gib(in.other_bytes), " GiB; raise --gpu-memory-utilization");
  KvSizing out;
  out.num_blocks = static_cast<int64_t>(remaining / static_cast<double>(in.bytes_per_block));
  out.kv_bytes = static_cast<size_t>(out.num_blocks) * in.bytes_per_block;
  out.max_concurrency = static_cast<double>(out.num_blocks) / one_seq_blocks;
  return out;
}

}  // namespace fastlm::cuda
