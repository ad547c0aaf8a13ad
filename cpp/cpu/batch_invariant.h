#pragma once
// Batch-invariant mode (on by default): a token's numbers depend only on the weights and that
// token's context, never on how many tokens share its forward pass (prefix-cache hits, chunk
// boundaries, the other requests of a step). Every linear runs the canonical GEMM
// (cpu/gemm_cpu.h) and attention scores use one order for decode and prefill. Off, large
// matmuls go to oneDNN (faster prefill, but its reduction order changes with M).
// Process-wide; FASTLM_BATCH_INVARIANT=0 turns it off at start-up.
namespace fastlm::cpu {

bool batch_invariant();
void set_batch_invariant(bool on);

}  // namespace fastlm::cpu
