#include "core/allocator.h"

#include <cstdlib>
#include <cstring>

#include "core/status.h"

namespace fastlm {
namespace {

class CpuAllocator final : public Allocator {
 public:
  Device device() const override { return Device::kCPU; }

  void* allocate(size_t bytes) override {
    size_t rounded = (bytes + 63) / 64 * 64;
    if (rounded == 0) rounded = 64;
    void* p = std::aligned_alloc(64, rounded);
    FASTLM_CHECK(p != nullptr, "out of memory allocating ", bytes, " bytes");
    return p;
  }

  void deallocate(void* ptr, size_t) override { std::free(ptr); }

  void zero(void* ptr, size_t bytes, void*) override {
    if (bytes > 0) std::memset(ptr, 0, bytes);
  }

  void copy(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes,
            void*) override {
    FASTLM_ASSERT(dst_device == Device::kCPU && src_device == Device::kCPU);
    if (bytes > 0) std::memmove(dst, src, bytes);
  }
};

Allocator* g_cuda_allocator = nullptr;

}  // namespace

Allocator& cpu_allocator() {
  static CpuAllocator allocator;
  return allocator;
}

Allocator& allocator_for(Device device) {
  switch (device) {
    case Device::kCPU:
      return cpu_allocator();
    case Device::kCUDA:
      FASTLM_CHECK(g_cuda_allocator != nullptr,
                   "no CUDA allocator: this build has no CUDA backend or it is not initialised");
      return *g_cuda_allocator;
  }
  throw Error("allocator_for: unknown device");
}

void register_allocator(Device device, Allocator* allocator) {
  FASTLM_CHECK(allocator == nullptr || allocator->device() == device,
               "register_allocator: allocator for ", device_name(allocator->device()),
               " registered as ", device_name(device));
  switch (device) {
    case Device::kCPU:
      throw Error("register_allocator: the CPU allocator cannot be replaced");
    case Device::kCUDA:
      g_cuda_allocator = allocator;
      return;
  }
}

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes,
                void* stream) {
  // The non-host side owns the copy engine; host to host is a memmove.
  const Device owner = dst_device != Device::kCPU ? dst_device : src_device;
  allocator_for(owner).copy(dst, dst_device, src, src_device, bytes, stream);
}

}  // namespace fastlm
