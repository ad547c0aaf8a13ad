#include "core/status.h"

namespace fastlm {

const char* status_code_name(StatusCode code) {
  switch (code) {
    case StatusCode::kOk:
      return "ok";
    case StatusCode::kInvalidArgument:
      return "invalid argument";
    case StatusCode::kUnsupported:
      return "unsupported";
    case StatusCode::kOutOfMemory:
      return "out of memory";
    case StatusCode::kDeviceError:
      return "device error";
  }
  return "?";
}

void check_status(const Status& status, const char* op) {
  switch (status.code) {
    case StatusCode::kOk:
      return;
    case StatusCode::kInvalidArgument:
    case StatusCode::kUnsupported:
      throw InvalidArgument(detail::concat(op, ": ", status.message));
    case StatusCode::kOutOfMemory:
    case StatusCode::kDeviceError:
      throw Error(detail::concat(op, ": ", status_code_name(status.code), ": ", status.message));
  }
}

}  // namespace fastlm
