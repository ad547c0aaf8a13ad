#!/usr/bin/env bash
# Sets fastlm up on a fresh Debian/Ubuntu machine: system packages, a virtual environment in
# .venv, and fastlm built and installed into it. `scripts/setup.sh test` adds the test extras
# (torch 2.13 CPU, transformers, pytest) and builds the C++ unit tests too.
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-run}"
pkgs=(cmake ninja-build g++ python3-venv libdnnl-dev nlohmann-json3-dev libgtest-dev libssl-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)

if [ "$mode" = "test" ]; then
  # torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
  "${pip[@]}" "torch==2.13.0"
  "${pip[@]}" -C cmake.define.FASTLM_BUILD_TESTS=ON ".[test]"
else
  "${pip[@]}" .
fi
