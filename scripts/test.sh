#!/usr/bin/env bash
# Installs everything from nothing (scripts/setup.sh test), then runs the C++ and Python tests.
# Extra arguments go to pytest.
# FASTLM_ALONGSIDE: a command run in the background while the tests run, once set-up is done
# (.ci/run puts the CUDA compile check and the wheel check there); its output is printed after
# the tests, and its failure fails this script.
set -euo pipefail
cd "$(dirname "$0")/.."
# Any skipped test fails the run (tests/python/conftest.py): CI must not be green by skipping.
export FASTLM_FAIL_ON_SKIP=1
bash scripts/setup.sh test
alongside_pid=""
if [ -n "${FASTLM_ALONGSIDE:-}" ]; then
  alongside_log=$(mktemp)
  (nice -n 5 bash -c "$FASTLM_ALONGSIDE") >"$alongside_log" 2>&1 &
  alongside_pid=$!
fi
build_dir=$(dirname "$(ls -d build/*/CTestTestfile.cmake | head -n 1)")
ctest=ctest
[ -x .venv/bin/ctest ] && ctest=.venv/bin/ctest
status=0
"$ctest" --test-dir "$build_dir" --output-on-failure -j2 || status=$?
[ "$status" -eq 0 ] && { .venv/bin/python -m pytest -q tests/python --durations=25 "$@" || status=$?; }
if [ -n "$alongside_pid" ]; then
  alongside_status=0
  wait "$alongside_pid" || alongside_status=$?
  echo "scripts/test.sh: alongside the tests ($FASTLM_ALONGSIDE):"
  cat "$alongside_log"
  rm -f "$alongside_log"
  if [ "$alongside_status" -ne 0 ]; then
    echo "scripts/test.sh: that failed (exit $alongside_status)" >&2
    [ "$status" -eq 0 ] && status=$alongside_status
  fi
fi
echo "scripts/test.sh: ${SECONDS}s in all"
exit "$status"
