#!/usr/bin/env bash
# Installs everything from nothing (scripts/setup.sh test), then runs the C++ and Python tests.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
build_dir=$(dirname "$(ls -d build/*/CTestTestfile.cmake | head -n 1)")
ctest=ctest
[ -x .venv/bin/ctest ] && ctest=.venv/bin/ctest
"$ctest" --test-dir "$build_dir" --output-on-failure -j2
.venv/bin/python -m pytest -q tests/python "$@"
