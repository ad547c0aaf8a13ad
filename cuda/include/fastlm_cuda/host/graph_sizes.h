#pragma once
// CUDA-graph capture sizes for decode (vLLM's cudagraph_capture_sizes idea): graphs are captured
// once at start-up for a fixed list of batch sizes, and a step with n sequences replays the
// smallest captured size >= n, its padding rows computing into scratch that nobody reads.
//   sizes: 1 2 4 8 16 24 32 ... 504 512   (then multiples of 8), capped at max_num_seqs
//   n = 13 -> 16;  n = 17 -> 24;  n > largest -> eager (no graph)
#include <vector>

namespace fastlm::cuda {

constexpr int kMaxCaptureSize = 512;

// Sizes in increasing order, none above min(max_num_seqs, kMaxCaptureSize); max_num_seqs itself
// is added when it falls between two sizes, so a full batch never runs eagerly. max_num_seqs >= 1.
std::vector<int> graph_capture_sizes(int max_num_seqs);

// The captured size a batch of n (>= 1) sequences pads to, or -1 when n exceeds the largest
// size (the step runs eagerly). `sizes` is increasing, as graph_capture_sizes returns it.
int graph_padded_size(const std::vector<int>& sizes, int n);

}  // namespace fastlm::cuda
