"""fastlm: an LLM inference engine with an OpenAI-compatible server."""

from __future__ import annotations

import pkgutil
from typing import TYPE_CHECKING, Any

# Dev builds put fastlm/_core*.so under <build>/pypath; let the package span both folders.
__path__ = pkgutil.extend_path(__path__, __name__)

__version__ = "0.1.0"

__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput", "__version__"]

if TYPE_CHECKING:
    from fastlm.llm import LLM
    from fastlm.outputs import CompletionOutput, RequestOutput
    from fastlm.sampling_params import SamplingParams


def __getattr__(name: str) -> Any:
    # Lazy, so `import fastlm.tokenizer` does not load the C++ runtime.
    if name == "LLM":
        from fastlm.llm import LLM

        return LLM
    if name == "SamplingParams":
        from fastlm.sampling_params import SamplingParams

        return SamplingParams
    if name in ("RequestOutput", "CompletionOutput"):
        from fastlm import outputs

        return getattr(outputs, name)
    raise AttributeError(name)
