"""The skip policy itself: under FASTLM_FAIL_ON_SKIP (or CI) a skipped test, a module skipped at
import time and an import that fails all fail the run; without it a skip stays a skip."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import skip_policy
from cli_run import fastlm_env

HERE = Path(__file__).resolve().parent

SUITE = {
    "conftest.py": (
        "from skip_policy import pytest_make_collect_report, pytest_runtest_makereport  # noqa\n"
    ),
    "test_runtime_skip.py": (
        "import pytest\n\n"
        "def test_skips():\n    pytest.skip('no accelerator here')\n\n"
        "@pytest.mark.xfail(reason='known bug', strict=True)\n"
        "def test_xfail():\n    assert False\n\n"
        "def test_passes():\n    assert True\n"
    ),
    "test_module_skip.py": "import pytest\n\npytest.importorskip('no_such_module_fastlm')\n",
}


def _run(tmp_path: Path, **env: str | None) -> subprocess.CompletedProcess[str]:
    for name, text in SUITE.items():
        (tmp_path / name).write_text(text)
    return subprocess.run(
        # Both kinds of skip in one run: a collection error would otherwise stop it (exit 2).
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)]
        + ["--continue-on-collection-errors"],
        cwd=tmp_path,
        # Installed pytest plugins (schemathesis, hypothesis, ...) only slow the run down here.
        env=fastlm_env(PYTHONPATH=str(HERE), PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", **env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_skips_pass_for_users(tmp_path: Path) -> None:
    result = _run(tmp_path, FASTLM_FAIL_ON_SKIP=None, CI=None)
    assert result.returncode == 0, result.stdout
    assert "1 passed, 2 skipped, 1 xfailed" in result.stdout


def test_skips_fail_under_fail_on_skip(tmp_path: Path) -> None:
    result = _run(tmp_path, FASTLM_FAIL_ON_SKIP="1", CI=None)
    assert result.returncode == 1, result.stdout
    assert "skips fail this run" in result.stdout
    assert "no accelerator here" in result.stdout and "no_such_module_fastlm" in result.stdout
    assert "1 failed, 1 passed, 1 xfailed, 1 error" in result.stdout


@pytest.mark.parametrize(
    ("fail_on_skip", "ci", "expected"),
    [
        (None, None, False),
        ("1", None, True),
        ("0", None, False),
        (None, "true", True),
        (None, "1", True),
        (None, "false", False),
        (None, "0", False),
        ("", "", False),
    ],
)
def test_policy_variables(
    monkeypatch: pytest.MonkeyPatch, fail_on_skip: str | None, ci: str | None, expected: bool
) -> None:
    for name, value in (("FASTLM_FAIL_ON_SKIP", fail_on_skip), ("CI", ci)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert skip_policy.fail_on_skip() is expected
