#!/usr/bin/env bash
# Compile-checks the CUDA backend where nvcc exists but no GPU does (development machines, CI):
# a separate build folder with FASTLM_CUDA forced ON, one architecture (sm_90a) and only the
# CUDA targets, so a CUDA compile error fails CI without building the CPU runtime again.
# Nothing here runs a kernel: bench/gpu/device_check.sh does that on a GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
nvcc=${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
if [ ! -x "$nvcc" ]; then
  echo "cuda_compile_check.sh: no nvcc, nothing to check"
  exit 0
fi
start=$SECONDS
build=${FASTLM_CUDA_CHECK_DIR:-build/cuda-check}
mkdir -p "$build"
cmake_bin=cmake
[ -x .venv/bin/cmake ] && cmake_bin=.venv/bin/cmake
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache
  -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
generator=()
command -v ninja >/dev/null || [ -x .venv/bin/ninja ] && generator=(-G Ninja)
[ -x .venv/bin/ninja ] && generator+=(-DCMAKE_MAKE_PROGRAM="$PWD/.venv/bin/ninja")
"$cmake_bin" -S . -B "$build" "${generator[@]}" "${launcher[@]}" -DCMAKE_CUDA_COMPILER="$nvcc" \
  -DFASTLM_CUDA=ON -DFASTLM_CUDA_ONLY=ON -DCMAKE_CUDA_ARCHITECTURES=90a >"$build/configure.log" 2>&1 ||
  {
    cat "$build/configure.log"
    exit 1
  }
grep -q "cuBLASLt: found" "$build/configure.log" ||
  echo "cuda_compile_check.sh: no cuBLASLt here (FASTLM_CUBLAS_ROOT): gemm.cc not checked"
"$cmake_bin" --build "$build" --target fastlm_cuda fastlm_cuda_capi -j "$(nproc)"
echo "cuda_compile_check.sh: CUDA targets compile for sm_90a ($((SECONDS - start)) s)"
