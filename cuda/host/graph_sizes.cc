#include "fastlm_cuda/host/graph_sizes.h"

#include <algorithm>

#include "core/status.h"

namespace fastlm::cuda {

std::vector<int> graph_capture_sizes(int max_num_seqs) {
  FASTLM_CHECK_ARG(max_num_seqs >= 1, "max_num_seqs must be >= 1, got ", max_num_seqs);
  const int cap = std::min(max_num_seqs, kMaxCaptureSize);
  std::vector<int> sizes;
  for (int s : {1, 2, 4})
    if (s <= cap) sizes.push_back(s);
  for (int s = 8; s <= cap; s += 8) sizes.push_back(s);
  if (sizes.back() != cap) sizes.push_back(cap);
  return sizes;
}

int graph_padded_size(const std::vector<int>& sizes, int n) {
  FASTLM_CHECK_ARG(n >= 1, "batch size must be >= 1, got ", n);
  auto it = std::lower_bound(sizes.begin(), sizes.end(), n);
  return it == sizes.end() ? -1 : *it;
}

}  // namespace fastlm::cuda
