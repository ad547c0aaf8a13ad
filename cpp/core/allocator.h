#pragma once
// Device memory. One Allocator per device: the CPU one hands out 64-byte aligned host memory;
// a device backend (CUDA: a caching allocator) registers its own with register_allocator()
// before the first tensor is made on that device. Tensors free through the allocator that made
// them, so a caching allocator sees every release.
#include <cstddef>

#include "core/device.h"

namespace fastlm {

class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual Device device() const = 0;
  // At least `bytes` (may be 0) of memory on device(), aligned to 64 bytes; throws Error when
  // out of memory. Never returns null.
  virtual void* allocate(size_t bytes) = 0;
  // Releases memory from allocate(ptr's size = bytes).
  virtual void deallocate(void* ptr, size_t bytes) = 0;
  // Zeroes bytes at ptr (memory of this device), ordered on `stream` (null: the default).
  virtual void zero(void* ptr, size_t bytes, void* stream) = 0;
  // Copies bytes between this device and the host, or within this device. Ordered on `stream`;
  // a copy to the host is complete when copy() returns.
  virtual void copy(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes,
                    void* stream) = 0;
};

// The 64-byte aligned host allocator (std::aligned_alloc).
Allocator& cpu_allocator();

// The allocator of `device`; throws Error when no backend for it is built or registered.
Allocator& allocator_for(Device device);
// A device backend installs its allocator here (once, at start-up; not thread-safe against
// concurrent allocation). Passing null unregisters it. The CPU allocator cannot be replaced.
void register_allocator(Device device, Allocator* allocator);

// Copies bytes between any two devices through the non-host side's allocator.
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes,
                void* stream = nullptr);

}  // namespace fastlm
