"""Resolve a model argument (HF folder, .gguf file or cached hub id) to the files on disk.

Nothing here touches the network: a hub id must already be in the local Hugging Face cache. The
one exception is the default model (no argument), fetched once into fastlm's cache by
`fastlm.default_model`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ModelNotFoundError(FileNotFoundError):
    """The model argument names nothing we can open locally."""


@dataclass
class ModelFiles:
    """Where a model's files are.

    `path` is the model folder or the .gguf file itself. For a GGUF, `model_dir` is its folder and
    the tokenizer and config come from the file's metadata (`config_path` is None).
    """

    path: str
    is_gguf: bool
    model_dir: str
    gguf_file: str | None = None
    config_path: str | None = None
    tokenizer_dir: str | None = None
    generation_config_path: str | None = None
    generation_config: dict[str, Any] = field(default_factory=dict)
    weight_files: list[str] = field(default_factory=list)


def hf_hub_cache_dir() -> Path:
    """The hub cache folder, with huggingface_hub's environment variables and precedence."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and not name.startswith((".", "~"))


def _cached_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The snapshot folder of `repo_id` in the local hub cache, or None."""
    repo_dir = hf_hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    if not repo_dir.is_dir():
        return None
    ref = revision or "main"
    ref_file = repo_dir / "refs" / ref
    commit = ref_file.read_text().strip() if ref_file.is_file() else ref
    snapshot = repo_dir / "snapshots" / commit
    if snapshot.is_dir():
        return snapshot
    snapshots = sorted((repo_dir / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime)
    if revision is not None or not snapshots:
        return None
    return snapshots[-1]


# What a model folder needs: configs, tokenizer files and safetensors weights (no pickles, no
# other frameworks' weights).
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja"]


def _hub_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.upper() in ("1", "ON", "YES", "TRUE")


def download_from_hub(repo_id: str, revision: str | None, filename: str | None = None) -> Path:
    """Downloads `repo_id` (or one file of it) into the hub cache with huggingface_hub; returns
    the snapshot folder. A clear ModelNotFoundError naming the id when offline or failing."""
    cache = hf_hub_cache_dir()
    where = f"{repo_id!r}" + (f" (revision {revision!r})" if revision else "")
    if _hub_offline():
        raise ModelNotFoundError(
            f"Model {where} is neither a local path nor in the Hugging Face cache ({cache}), and "
            "HF_HUB_OFFLINE is set: download it while online (e.g. `huggingface-cli download "
            f"{repo_id}`) or pass a local folder or .gguf file."
        )
    try:
        import huggingface_hub
    except ImportError as e:
        raise ModelNotFoundError(
            f"Model {where} is not in the Hugging Face cache ({cache}) and huggingface_hub, "
            "which downloads it, is not installed"
        ) from e
    try:
        if filename is not None:
            file = huggingface_hub.hf_hub_download(
                repo_id, filename, revision=revision, cache_dir=cache
            )
            return Path(file).parents[len(Path(filename).parts) - 1]
        return Path(
            huggingface_hub.snapshot_download(
                repo_id, revision=revision, cache_dir=cache, allow_patterns=_HUB_PATTERNS
            )
        )
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, gated, ...: one clear error
        raise ModelNotFoundError(
            f"Model {where} is neither a local path nor in the Hugging Face cache ({cache}), and "
            f"downloading it failed: {type(e).__name__}: {e}"
        ) from e


def resolve_hub_id(repo_id: str, revision: str | None = None) -> Path:
    """The snapshot folder of `repo_id`: from the local hub cache, else downloaded."""
    snapshot = _cached_snapshot(repo_id, revision)
    if snapshot is not None:
        return snapshot
    return download_from_hub(repo_id, revision)


def _read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return data


def _folder_files(folder: Path, path: str) -> ModelFiles:
    config = folder / "config.json"
    tokenizer_json = folder / "tokenizer.json"
    gen = folder / "generation_config.json"
    ggufs = sorted(folder.glob("*.gguf"))
    if not config.is_file() and len(ggufs) == 1:
        # A hub repo or folder holding just a GGUF is that GGUF.
        return _gguf_files(ggufs[0])
    if not config.is_file() and not tokenizer_json.is_file():
        hint = f" It holds GGUF files {[g.name for g in ggufs]}: pass one." if ggufs else ""
        raise ModelNotFoundError(f"{folder} has no config.json nor tokenizer.json.{hint}")
    weights = sorted(str(p) for p in folder.glob("*.safetensors"))
    if not weights:
        weights = sorted(str(p) for p in folder.glob("*.bin"))
    return ModelFiles(
        path=path,
        is_gguf=False,
        model_dir=str(folder),
        config_path=str(config) if config.is_file() else None,
        tokenizer_dir=str(folder),
        generation_config_path=str(gen) if gen.is_file() else None,
        generation_config=_read_json(gen) if gen.is_file() else {},
        weight_files=weights,
    )


def _gguf_files(file: Path) -> ModelFiles:
    folder = file.parent
    # A tokenizer.json beside the GGUF wins over the one rebuilt from metadata, as with HF repos
    # that ship both; generation_config.json likewise.
    gen = folder / "generation_config.json"
    return ModelFiles(
        path=str(file),
        is_gguf=True,
        model_dir=str(folder),
        gguf_file=str(file),
        tokenizer_dir=str(folder) if (folder / "tokenizer.json").is_file() else None,
        generation_config_path=str(gen) if gen.is_file() else None,
        generation_config=_read_json(gen) if gen.is_file() else {},
        weight_files=[str(file)],
    )


def resolve_model(
    model: str | os.PathLike[str] | None = None, revision: str | None = None
) -> ModelFiles:
    """Find the files of `model`: a folder, a .gguf file, a cached hub id, or None for the default.

    A hub id may name a GGUF inside the repo as `org/name/file.gguf`.
    """
    if model is None:
        from fastlm.default_model import ensure_default_model

        return _gguf_files(ensure_default_model())
    name = os.fspath(model)
    local = Path(name).expanduser()
    if local.is_dir():
        return _folder_files(local.resolve(), str(local.resolve()))
    if local.is_file():
        if local.suffix.lower() != ".gguf":
            raise ModelNotFoundError(
                f"{local} is a file but not a .gguf; pass a model folder or .gguf"
            )
        return _gguf_files(local.resolve())
    if local.is_absolute() or name.startswith((".", "~")):
        raise ModelNotFoundError(f"Model {name!r}: no such file or folder")
    if name.lower().endswith(".gguf") and name.count("/") >= 2:
        parts = name.split("/")
        repo_id, inner = "/".join(parts[:2]), "/".join(parts[2:])
        snapshot = _cached_snapshot(repo_id, revision)
        if snapshot is None or not (snapshot / inner).is_file():
            snapshot = download_from_hub(repo_id, revision, inner)
        target = snapshot / inner
        if not target.is_file():
            raise ModelNotFoundError(f"{inner!r} is not in the snapshot {snapshot}")
        return _gguf_files(target)
    if _looks_like_hub_id(name):
        snapshot = resolve_hub_id(name, revision)
        return _folder_files(snapshot, str(snapshot))
    raise ModelNotFoundError(f"Model {name!r} is not a folder, a .gguf file nor a hub id")
