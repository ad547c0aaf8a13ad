#pragma once
// What every CUDA entry point returns, and the element types they take. No exceptions cross the
// kernel API: the ops layer (cpp/ops) turns a status into fastlm::Error.
namespace fastlm::cuda {

enum class Status {
  kOk,
  kInvalidArgument,  // a size or pointer the kernel cannot take (the message says which)
  kUnsupported,      // a valid combination this backend has no kernel for (e.g. head_dim 80)
  kCudaError,        // a launch or runtime error (cudaGetLastError)
};

// Element type of activations, weights and KV cache (the same for all operands of one call;
// statistics accumulate in float32).
enum class DType { kF32, kF16, kBF16 };

const char* status_name(Status s);
// The message of the last non-OK status returned on this host thread ("" when none).
const char* last_error_message();

}  // namespace fastlm::cuda
