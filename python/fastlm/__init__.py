"""fastlm: an LLM inference engine with an OpenAI-compatible server."""

from __future__ import annotations

import pkgutil
from typing import TYPE_CHECKING, Any

# Dev builds put fastlm/_core*.so under <build>/pypath; let the package span both folders.
__path__ = pkgutil.extend_path(__path__, __name__)


def _onednn_library() -> str | None:
    """Where the `onednn-cpu-gomp` distribution put libdnnl.so.3, if it is installed."""
    from pathlib import Path

    here = Path(__file__).resolve()
    # pip's usual layout: <prefix>/lib/libdnnl.so.3 beside <prefix>/lib/pythonX.Y/site-packages.
    if len(here.parents) > 3 and (here.parents[3] / "libdnnl.so.3").is_file():
        return str(here.parents[3] / "libdnnl.so.3")
    import importlib.metadata  # ~0.1 s to import, so only off the usual layout

    try:
        dist = importlib.metadata.distribution("onednn-cpu-gomp")
    except importlib.metadata.PackageNotFoundError:
        return None  # a build against another oneDNN: its RPATH names it
    found = [f for f in dist.files or () if f.name == "libdnnl.so.3"]
    return str(dist.locate_file(found[0])) if found else None


def _preload_onednn() -> None:
    """Loads libdnnl.so.3 before `_core` needs it.

    _core's RUNPATH ($ORIGIN/../../..) names <prefix>/lib, which holds for venvs, --user and
    system installs; for other layouts (PYTHONPATH, --target, a package spanning folders) the
    distribution's RECORD knows where the library went.
    """
    import ctypes

    path = _onednn_library()
    if path is None:
        return
    try:
        ctypes.CDLL(path)
    except OSError as e:
        raise ImportError(
            f"fastlm: cannot load oneDNN ({path}): {e}. It needs libgomp.so.1, GCC's OpenMP "
            "runtime (Debian/Ubuntu: apt-get install libgomp1)."
        ) from e


_preload_onednn()

__version__ = "0.1.0"

__all__ = [
    "LLM",
    "SamplingParams",
    "StructuredOutputsParams",
    "RequestOutput",
    "CompletionOutput",
    "__version__",
]

if TYPE_CHECKING:
    from fastlm.llm import LLM
    from fastlm.outputs import CompletionOutput, RequestOutput
    from fastlm.sampling_params import SamplingParams
    from fastlm.structured_outputs import StructuredOutputsParams


def __getattr__(name: str) -> Any:
    # Lazy, so `import fastlm.tokenizer` does not load the C++ runtime.
    if name == "LLM":
        from fastlm.llm import LLM

        return LLM
    if name == "SamplingParams":
        from fastlm.sampling_params import SamplingParams

        return SamplingParams
    if name == "StructuredOutputsParams":
        from fastlm.structured_outputs import StructuredOutputsParams

        return StructuredOutputsParams
    if name in ("RequestOutput", "CompletionOutput"):
        from fastlm import outputs

        return getattr(outputs, name)
    raise AttributeError(name)
