#include "core/exec_context.h"

namespace fastlm {

void Workspace::reserve(size_t bytes) {
  if (bytes <= capacity()) return;
  buffer_ = Tensor::empty({static_cast<int64_t>(bytes)}, DType::kU8, device_);
}

}  // namespace fastlm
