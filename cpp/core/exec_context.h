#pragma once
// ExecContext: the first argument of every op. It names the device the op runs on (every tensor
// argument must live there), the stream work is queued on (cudaStream_t on CUDA, null on CPU),
// a scratch workspace, and the device's backend.
#include <cstddef>

#include "core/backend.h"
#include "core/device.h"
#include "core/tensor.h"

namespace fastlm {

// Scratch memory of one device, reused across ops. Sized once at start-up (reserve) by whoever
// plans the forward pass; get() only grows it when asked for more, which a planned forward
// never does.
class Workspace {
 public:
  explicit Workspace(Device device = Device::kCPU) : device_(device) {}
  void reserve(size_t bytes);
  // `bytes` of scratch, valid until the next get()/reserve() that grows it.
  void* get(size_t bytes) {
    if (bytes > capacity()) reserve(bytes);
    return buffer_.data();
  }
  size_t capacity() const { return buffer_.defined() ? buffer_.nbytes() : 0; }
  Device device() const { return device_; }

 private:
  Device device_;
  Tensor buffer_;
};

struct ExecContext {
  Device device = Device::kCPU;
  void* stream = nullptr;  // cudaStream_t on CUDA; null on CPU
  Workspace* workspace = nullptr;
  Backend* backend = nullptr;
};

}  // namespace fastlm
