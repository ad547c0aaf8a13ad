#pragma once
// Errors: fastlm::Error carries a message to Python (pybind11 maps it to RuntimeError /
// ValueError). FASTLM_CHECK is for conditions a user can trigger (bad config, bad input);
// FASTLM_ASSERT for internal invariants (still checked in release builds: they are cheap).
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
