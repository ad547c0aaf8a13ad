"""Fixtures, markers and the skip policy of the Python tests.

Fixtures live in fixtures_tokenizers.py and fixtures_server.py and are registered here, so test
modules use them by name without importing them.

Markers (registered in pyproject.toml): `server` and `model` are set from the fixtures a test
uses (a live server; the real SmolLM2 GGUF), `slow` by hand, so `pytest -m "not slow"` is the
inner loop.

A skipped test passes silently; in CI (`CI` set) or with `FASTLM_FAIL_ON_SKIP=1` every skip,
including a module skipped at import time, is reported as a failure instead.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest
from fixtures_server import openai_schema, server, tiny_model, tiny_runtime  # noqa: F401
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
    smollm_gguf,
    spm_gguf,
)

# Fixtures that mark the tests using them (directly or through other fixtures).
_FIXTURE_MARKERS = {"server": "server", "smollm_gguf": "model"}


def fail_on_skip() -> bool:
    if os.environ.get("FASTLM_FAIL_ON_SKIP", "") not in ("", "0"):
        return True
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        for fixture, marker in _FIXTURE_MARKERS.items():
            if fixture in names:
                item.add_marker(marker)


def _as_failure(report: pytest.TestReport | pytest.CollectReport) -> None:
    reason = report.longrepr
    if isinstance(reason, tuple) and len(reason) == 3:  # (file, line, "Skipped: ...")
        reason = f"{reason[0]}:{reason[1]}: {reason[2]}"
    report.outcome = "failed"
    report.longrepr = f"skipped, and skips fail this run (CI / FASTLM_FAIL_ON_SKIP): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[Any]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and fail_on_skip():
        _as_failure(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[Any]:
    outcome = yield
    report: pytest.CollectReport = outcome.get_result()
    if report.skipped and fail_on_skip():
        _as_failure(report)
