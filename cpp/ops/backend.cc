#include "ops/backend.h"

#include "core/status.h"
#include "cpu/cpu_backend.h"

namespace fastlm::ops {
namespace {

[[noreturn]] void unavailable(Device device) {
  throw InvalidArgument(
      detail::concat("device '", device_name(device), "' is not available in this build"));
}

}  // namespace

bool device_available(Device device) {
  switch (device) {
    case Device::kCPU:
      return true;
    case Device::kCUDA:
      return false;  // the CUDA backend (cuda/) answers here once it is built
  }
  return false;
}

Backend& backend(Device device) {
  switch (device) {
    case Device::kCPU:
      return cpu::cpu_backend();
    case Device::kCUDA:
      break;
  }
  unavailable(device);
}

ExecContext& default_context(Device device) {
  switch (device) {
    case Device::kCPU:
      return cpu::cpu_context();
    case Device::kCUDA:
      break;
  }
  unavailable(device);
}

}  // namespace fastlm::ops
