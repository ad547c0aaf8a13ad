#pragma once
// Records a status's message for last_error_message() (plain C++: usable from .cc and .cu).
#include <string>

#include "fastlm_cuda/status.h"

namespace fastlm::cuda {

// Records `msg` as this host thread's last error message and returns `s`.
Status fail(Status s, std::string msg);

}  // namespace fastlm::cuda
