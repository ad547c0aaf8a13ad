#include <cuda_runtime.h>

#include <string>

#include "common.cuh"

namespace fastlm::cuda {

namespace {
thread_local std::string last_message;
}  // namespace

const char* status_name(Status s) {
  switch (s) {
    case Status::kOk:
      return "ok";
    case Status::kInvalidArgument:
      return "invalid argument";
    case Status::kUnsupported:
      return "unsupported";
    case Status::kCudaError:
      return "CUDA error";
  }
  return "unknown status";
}

const char* last_error_message() { return last_message.c_str(); }

Status fail(Status s, std::string msg) {
  last_message = std::move(msg);
  return s;
}

Status check_launch(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) return Status::kOk;
  return fail(Status::kCudaError, std::string(what) + ": " + cudaGetErrorString(e));
}

}  // namespace fastlm::cuda
