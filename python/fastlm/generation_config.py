"""A model's generation_config.json as default sampling parameters (vLLM's
`get_diff_sampling_param`): the request's own values win over these."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# generation_config.json key -> sampling parameter name.
_SAMPLING_KEYS = {
    "repetition_penalty": "repetition_penalty",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "max_new_tokens": "max_tokens",
}


def read_generation_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON of generation_config.json (`path` is the file or its folder); {} when absent."""
    file = Path(path)
    if file.is_dir():
        file = file / "generation_config.json"
    if not file.is_file():
        return {}
    with open(file, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{file} does not hold a JSON object")
    return data


def default_sampling_params(generation_config: dict[str, Any]) -> dict[str, Any]:
    """Sampling overrides the model's authors set: temperature, top_p, top_k, min_p,
    repetition_penalty and max_tokens (from max_new_tokens). Unset (null) keys are left out."""
    out: dict[str, Any] = {}
    for key, name in _SAMPLING_KEYS.items():
        value = generation_config.get(key)
        if value is not None:
            out[name] = value
    return out


def check_override(override: dict[str, Any]) -> None:
    """--override-generation-config takes generation_config.json's sampling keys (vLLM); any
    other key would be silently ignored, so it is an error."""
    unknown = [k for k in override if k not in _SAMPLING_KEYS]
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(_SAMPLING_KEYS)}"
        )


def eos_token_ids(generation_config: dict[str, Any]) -> list[int]:
    """generation_config's eos_token_id (an int or a list) as a list: extra stop token ids."""
    value = generation_config.get("eos_token_id")
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]
