"""Text <-> token ids: `Tokenizer` (tokenizer_hf.py: a `tokenizers.Tokenizer` plus what
transformers reads beside it) and `load_tokenizer`, which loads a HF folder's tokenizer
(tokenizer_hf.py) or rebuilds a GGUF file's (tokenizer_gguf.py), so both give transformers' ids.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastlm.model_files import ModelFiles
from fastlm.tokenizer_gguf import load_gguf_tokenizer
from fastlm.tokenizer_hf import (
    SPECIAL_TOKEN_NAMES,
    Tokenizer,
    load_hf_tokenizer,
    normalize_chat_template,
)

__all__ = [
    "SPECIAL_TOKEN_NAMES",
    "Tokenizer",
    "load_gguf_tokenizer",
    "load_hf_tokenizer",
    "load_tokenizer",
    "normalize_chat_template",
]


def load_tokenizer(model: str | os.PathLike[str] | ModelFiles) -> Tokenizer:
    """The tokenizer of a model folder (tokenizer.json), a .gguf file or resolved ModelFiles.

    A .gguf with a tokenizer.json beside it uses the tokenizer.json.
    """
    if isinstance(model, ModelFiles):
        if model.tokenizer_dir is not None:
            return load_hf_tokenizer(model.tokenizer_dir)
        if model.gguf_file is not None:
            return load_gguf_tokenizer(model.gguf_file)
        raise FileNotFoundError(f"{model.path} has no tokenizer.json")
    path = Path(model)
    if path.is_dir():
        return load_hf_tokenizer(path)
    if path.is_file() and path.suffix.lower() == ".gguf":
        if (path.parent / "tokenizer.json").is_file():
            return load_hf_tokenizer(path.parent)
        return load_gguf_tokenizer(path)
    raise FileNotFoundError(f"{model} is neither a tokenizer folder nor a .gguf file")
