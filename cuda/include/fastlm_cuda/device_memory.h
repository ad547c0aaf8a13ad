#pragma once
// Device memory for the CUDA backend: cudaMalloc/cudaFree as the RawAllocator under the
// host-side CachingAllocator, and the memory numbers KV sizing starts from.
#include <cstddef>

#include "fastlm_cuda/host/caching_allocator.h"
#include "fastlm_cuda/status.h"

namespace fastlm::cuda {

// cudaMalloc on the current device; nullptr (and the error cleared) when out of memory.
class CudaRawAllocator : public RawAllocator {
 public:
  void* allocate(size_t bytes) override;
  void deallocate(void* ptr, size_t bytes) override;
};

// cudaMemGetInfo of the current device.
Status device_memory_info(size_t* free_bytes, size_t* total_bytes);

}  // namespace fastlm::cuda
