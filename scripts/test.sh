#!/usr/bin/env bash
# Installs everything from nothing (scripts/setup.sh test), then runs the C++ and Python tests.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# Any skipped test fails the run (tests/python/conftest.py): CI must not be green by skipping.
export FASTLM_FAIL_ON_SKIP=1
bash scripts/setup.sh test
build_dir=$(dirname "$(ls -d build/*/CTestTestfile.cmake | head -n 1)")
ctest=ctest
[ -x .venv/bin/ctest ] && ctest=.venv/bin/ctest
"$ctest" --test-dir "$build_dir" --output-on-failure -j2
.venv/bin/python -m pytest -q tests/python --durations=25 "$@"
echo "scripts/test.sh: ${SECONDS}s in all"
