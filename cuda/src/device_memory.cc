#include "fastlm_cuda/device_memory.h"

#include <cuda_runtime.h>

#include <string>

#include "fail.h"

namespace fastlm::cuda {

void* CudaRawAllocator::allocate(size_t bytes) {
  void* p = nullptr;
  if (cudaMalloc(&p, bytes) != cudaSuccess) {
    cudaGetLastError();  // an OOM must not poison the next launch check
    return nullptr;
  }
  return p;
}

void CudaRawAllocator::deallocate(void* ptr, size_t) { cudaFree(ptr); }

Status device_memory_info(size_t* free_bytes, size_t* total_bytes) {
  const cudaError_t e = cudaMemGetInfo(free_bytes, total_bytes);
  if (e != cudaSuccess)
    return fail(Status::kCudaError, std::string("cudaMemGetInfo: ") + cudaGetErrorString(e));
  return Status::kOk;
}

}  // namespace fastlm::cuda
