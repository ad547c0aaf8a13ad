#pragma once
// Errors: fastlm::Error carries a message to Python (pybind11 maps it to RuntimeError /
// ValueError). FASTLM_CHECK is for conditions a user can trigger (bad config, bad input);
// FASTLM_ASSERT for internal invariants (still checked in release builds: they are cheap).
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

namespace fastlm {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

// A user-caused problem (invalid request or parameter); mapped to ValueError in Python.
class InvalidArgument : public Error {
 public:
  explicit InvalidArgument(const std::string& msg) : Error(msg) {}
};

// What a kernel body returns (device kernels take raw pointers, sizes and a stream and must not
// throw across a C ABI). `message` is a static string (or the device runtime's own, e.g.
// cudaGetErrorString). The op entry point turns a failure into an exception: check_status().
enum class StatusCode : uint8_t {
  kOk,
  kInvalidArgument,  // the caller's fault: shapes, ids, sizes
  kUnsupported,      // a combination this backend has no kernel for
  kOutOfMemory,
  kDeviceError,  // the device runtime failed (launch, copy, sync)
};

struct Status {
  StatusCode code = StatusCode::kOk;
  const char* message = "";
  bool ok() const { return code == StatusCode::kOk; }
  static Status Ok() { return {}; }
};

const char* status_code_name(StatusCode code);
// Throws InvalidArgument for kInvalidArgument / kUnsupported, Error otherwise; does nothing on kOk.
void check_status(const Status& status, const char* op);

namespace detail {
template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace fastlm

#define FASTLM_CHECK(cond, ...)                                                \
  do {                                                                         \
    if (!(cond)) throw ::fastlm::Error(::fastlm::detail::concat(__VA_ARGS__)); \
  } while (0)

#define FASTLM_CHECK_ARG(cond, ...)                                                      \
  do {                                                                                   \
    if (!(cond)) throw ::fastlm::InvalidArgument(::fastlm::detail::concat(__VA_ARGS__)); \
  } while (0)

#define FASTLM_ASSERT(cond)                                                                        \
  do {                                                                                             \
    if (!(cond))                                                                                   \
      throw ::fastlm::Error(::fastlm::detail::concat("internal invariant failed: ", #cond, " at ", \
                                                     __FILE__, ":", __LINE__));                    \
  } while (0)
