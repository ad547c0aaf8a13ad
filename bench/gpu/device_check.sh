#!/usr/bin/env bash
# The one script to run on a lent GPU machine (the `device` tool's `run`): builds the CUDA
# targets (CUDA-only: -DFASTLM_CUDA_ONLY=ON, sm_90a, -j16), runs tests/gpu (every kernel against
# torch, per dtype), runs the kernel benchmark, and prints one summary table. Aim: < 6 minutes on
# an H200 (a machine start and a rerun must fit in the 15-minute lease).
#
# Carry: nothing. The CUDA-only build needs cmake, ninja, nvcc 13 and cuBLASLt (the toolkit's or
# the `nvidia-cublas` wheel next to torch), and the tests python3 with torch + pytest: all on the
# `nvidia-h200` image (KINDS.md). No oneDNN, OpenMP runtime, OpenSSL, nlohmann-json, gtest or
# pybind11 is needed for this build. Run it as:
#   run(command="bash bench/gpu/device_check.sh", timeout_s=480)
# Results land in $OUT (build.log, tests.log, tests.xml, bench.json, summary.txt).
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/fastlm-device-check}
mkdir -p "$out"
t0=$SECONDS
stamp() { echo "device_check: [$((SECONDS - t0)) s] $*"; }

nvidia-smi -L || true
nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
"$nvcc" --version | tail -n 2
python=$(command -v python3)
jobs=$(nproc)

stamp "configure + build"
build_rc=0
{
  cmake -S . -B build/gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DFASTLM_CUDA=ON \
    -DFASTLM_CUDA_ONLY=ON -DCMAKE_CUDA_ARCHITECTURES=90a -DCMAKE_CUDA_COMPILER="$nvcc" \
    -DPython3_EXECUTABLE="$python" &&
    cmake --build build/gpu -j "$jobs" --target fastlm_cuda_capi
} >"$out/build.log" 2>&1 || build_rc=$?
tail -n 5 "$out/build.log"
if [ "$build_rc" -ne 0 ]; then
  grep -E "error|Error" "$out/build.log" | head -n 40
  stamp "BUILD FAILED"
  exit 1
fi
stamp "built"

export FASTLM_CUDA_CAPI=$PWD/build/gpu/cuda/libfastlm_cuda_capi.so
export PYTHONUNBUFFERED=1
test_rc=0
timeout 240 "$python" -m pytest -q -p no:cacheprovider --rootdir tests/gpu tests/gpu \
  --junitxml="$out/tests.xml" -o junit_family=xunit1 >"$out/tests.log" 2>&1 || test_rc=$?
tail -n 30 "$out/tests.log"
stamp "tests done (pytest exit $test_rc)"

bench_rc=0
timeout 150 "$python" bench/gpu/bench_kernels.py --out "$out/bench.json" 2>&1 |
  tee "$out/bench.log" || bench_rc=$?
stamp "bench done (exit $bench_rc)"

"$python" bench/gpu/summary.py "$out/tests.xml" "$out/bench.json" | tee "$out/summary.txt"
stamp "total"
[ "$test_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
