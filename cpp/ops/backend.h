#pragma once
// The backends this build has, by device: the one place a device backend plugs in.
// CPU: cpu::cpu_backend(). CUDA (issue 11): a cuda::CudaBackend whose allocator is registered
// with register_allocator(Device::kCUDA, ...) when it is created.
#include "core/backend.h"
#include "core/exec_context.h"

namespace fastlm::ops {

// Whether this build and machine can run `device`.
bool device_available(Device device);
// The backend of `device`; throws InvalidArgument when it is not available.
Backend& backend(Device device);
// The default execution context of `device` (CPU: no stream, a shared workspace).
ExecContext& default_context(Device device);

}  // namespace fastlm::ops
