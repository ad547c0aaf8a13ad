"""The skip policy, a pytest plugin loaded by conftest.py: a skipped test passes silently, so in
CI (`CI` set) or with `FASTLM_FAIL_ON_SKIP=1` every skip, including a module skipped at import
time, is reported as a failure instead. Expected failures (xfail) are left alone."""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest


def fail_on_skip() -> bool:
    if os.environ.get("FASTLM_FAIL_ON_SKIP", "") not in ("", "0"):
        return True
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


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
