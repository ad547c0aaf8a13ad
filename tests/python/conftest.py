"""Fixtures, markers and the skip policy of the Python tests.

Fixtures live in fixtures_tokenizers.py and fixtures_server.py and are registered here, so test
modules use them by name without importing them.

Markers (registered in pyproject.toml): `server` and `model` are set from the fixtures a test
uses (a live server; the real SmolLM2 GGUF), `slow` by hand, so `pytest -m "not slow"` is the
inner loop.

Skips fail the run in CI or with FASTLM_FAIL_ON_SKIP=1 (skip_policy.py).
"""

from __future__ import annotations

import pytest
from fixtures_server import (  # noqa: F401
    client,
    http,
    openai_schema,
    server,
    tiny_model,
    tiny_runtime,
)
from fixtures_tokenizers import (  # noqa: F401
    fl_llama3,
    fl_qwen3,
    fl_smollm,
    fl_spm,
    hf_llama3,
    hf_qwen3,
    hf_smollm,
    hf_spm,
    llama3_dir,
    qwen3_dir,
    shared_gguf_parses,
    smollm_gguf,
    spm_gguf,
)
from skip_policy import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401

# Fixtures that mark the tests using them (directly or through other fixtures). hf_smollm is
# transformers reading the 98 MB GGUF: tens of seconds.
_FIXTURE_MARKERS = {"server": ["server"], "smollm_gguf": ["model"], "hf_smollm": ["slow"]}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        for fixture, markers in _FIXTURE_MARKERS.items():
            if fixture in names:
                for marker in markers:
                    item.add_marker(marker)
