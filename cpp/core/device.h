#pragma once
#include <cstdint>

namespace fastlm {

enum class Device : uint8_t { kCPU, kCUDA };

inline const char* device_name(Device device) {
  switch (device) {
    case Device::kCPU:
      return "cpu";
    case Device::kCUDA:
      return "cuda";
  }
  return "?";
}

}  // namespace fastlm
