"""Shared fixtures of the server tests (registered by conftest.py): a tiny random Llama checkpoint
with a real Llama-3 tokenizer, an engine over it, servers on 127.0.0.1, and OpenAI's published
schemas.

OpenAI's spec is read from `$FASTLM_OPENAI_SPEC`, else `../shared/openai-openapi/openapi.yaml`
beside the checkout. It is optional for users (the schema tests skip, saying why) and required
in CI, where any skip fails the run (conftest.py).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import referencing
import yaml
from referencing.jsonschema import DRAFT202012

__all__ = [
    "client",
    "http",
    "openai_schema",
    "server",
    "tiny_model",
    "tiny_runtime",
    "start_server",
    "make_runtime",
    "TINY_MAX_MODEL_LEN",
    "MODEL_NAME",
]

TINY_MAX_MODEL_LEN = 128
MODEL_NAME = "tiny-llama"
OPENAPI_YAML = Path(
    os.environ.get("FASTLM_OPENAI_SPEC")
    or Path(__file__).resolve().parents[3] / "shared" / "openai-openapi" / "openapi.yaml"
)


@pytest.fixture(scope="session")
def tiny_model(llama3_dir: Path) -> Path:
    from tiny_models import tiny_llama
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(llama3_dir / "tokenizer.json")).get_vocab_size(
        with_added_tokens=True
    )
    # Far from uniform logits, so greedy text is stable and sampling is not.
    folder = Path(
        tiny_llama(
            vocab=vocab,
            std=0.1,
            norms=(0.5, 1.5),
            rms_norm_eps=1e-6,
            max_position_embeddings=256,
            tie_word_embeddings=True,
            bos_token_id=128000,
            eos_token_id=128001,
        )
    )
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(llama3_dir / name, folder / name)
    return folder


def make_runtime(model: Path) -> Any:
    """A fresh engine over the tiny model (one per live server: an engine's outputs go to the
    event loop that watches it)."""
    from fastlm.runtime import EngineArgs, Runtime

    return Runtime(
        EngineArgs(
            model=str(model),
            dtype="float32",
            max_model_len=TINY_MAX_MODEL_LEN,
            kv_cache_memory=16 * 2**20,
            max_num_seqs=64,
        )
    )


@pytest.fixture(scope="session")
def tiny_runtime(tiny_model: Path) -> Any:
    return make_runtime(tiny_model)


def start_server(runtime: Any, **kwargs: Any) -> Any:
    """A ServerThread over `runtime` (kwargs: ServerConfig fields, or ServerThread's cors,
    root_path, max_body_size)."""
    from fastlm.async_engine import AsyncEngine
    from fastlm.server.local import ServerThread
    from fastlm.server.serving import ServerConfig

    thread_args = {k: kwargs.pop(k) for k in ("cors", "root_path", "max_body_size") if k in kwargs}
    config = ServerConfig(
        served_model_names=kwargs.pop("served_model_names", [MODEL_NAME]),
        model_path=str(runtime.files.path),
        **kwargs,
    )
    return ServerThread(config, engine=AsyncEngine(runtime), **thread_args).start()


@pytest.fixture(scope="module")
def server(tiny_runtime: Any) -> Iterator[Any]:
    srv = start_server(tiny_runtime)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: Any) -> Any:
    """The official openai client on the module's `server`."""
    import openai

    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def http(server: Any) -> Iterator[Any]:
    """An httpx client on the module's `server`."""
    import httpx

    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def _nullable_to_31(node: Any) -> Any:
    """OpenAI's file mixes OpenAPI 3.0's `nullable: true` into a 3.1 document; JSON Schema
    ignores that keyword, so turn it into a null type."""
    if isinstance(node, dict):
        out = {k: _nullable_to_31(v) for k, v in node.items()}
        if out.pop("nullable", False):
            if "type" in out and isinstance(out["type"], str):
                out["type"] = [out["type"], "null"]
            if "enum" in out:
                out["enum"] = [*out["enum"], None]
            if "$ref" in out or "type" not in out:
                out = {"anyOf": [out, {"type": "null"}]}
        return out
    if isinstance(node, list):
        return [_nullable_to_31(v) for v in node]
    return node


@lru_cache(maxsize=1)
def _openai_registry() -> Any:
    if not OPENAPI_YAML.is_file():
        pytest.skip(
            f"OpenAI's spec {OPENAPI_YAML} is missing (set FASTLM_OPENAI_SPEC to its path); "
            "CI requires it"
        )
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(OPENAPI_YAML, encoding="utf-8") as f:
        doc = _nullable_to_31(yaml.load(f, Loader=loader))
    resource = referencing.Resource(contents=doc, specification=DRAFT202012)
    return referencing.Registry().with_resource("urn:openai", resource)


class OpenAISchemas:
    def validate(self, name: str, instance: Any) -> None:
        validator = jsonschema.Draft202012Validator(
            {"$ref": f"urn:openai#/components/schemas/{name}"}, registry=_openai_registry()
        )
        errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
        assert not errors, (
            f"{name} violates OpenAI's spec: "
            + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])
            + f"\n{json.dumps(instance)[:2000]}"
        )


@pytest.fixture(scope="session")
def openai_schema() -> OpenAISchemas:
    _openai_registry()
    return OpenAISchemas()
