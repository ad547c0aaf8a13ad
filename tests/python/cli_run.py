"""Run the `fastlm` command line in a subprocess, as users do (tests of the CLI)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import fastlm


def fastlm_env(**overrides: str | None) -> dict[str, str]:
    """This environment, with the folders this process imports fastlm from (a dev build spans
    two: the sources and the build's pypath) on PYTHONPATH; None removes a variable."""
    env = dict(os.environ)
    roots = [str(Path(p).resolve().parent) for p in fastlm.__path__]
    env["PYTHONPATH"] = os.pathsep.join([*roots, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_fastlm(
    *args: str,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastlm", *args],
        env=env or fastlm_env(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def offline_pip_env(cache: Path, **overrides: str | None) -> dict[str, str]:
    """A fastlm cache at `cache`, and pip with no configuration file and no index but the given
    overrides (e.g. an unreachable PIP_INDEX_URL, or PIP_FIND_LINKS with a local wheel)."""
    base: dict[str, str | None] = {
        "FASTLM_CACHE": str(cache),
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_INDEX_URL": None,
        "PIP_EXTRA_INDEX_URL": None,
        "PIP_FIND_LINKS": None,
        "PIP_NO_INDEX": None,
        "PIP_RETRIES": "0",
        "PIP_DEFAULT_TIMEOUT": "5",
        "PIP_TIMEOUT": "5",
    }
    base.update(overrides)
    return fastlm_env(**base)
