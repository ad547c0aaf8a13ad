"""Structured-output request fields (response_format, structured_outputs, vLLM's legacy guided_*)
to one StructuredOutputsParams, and its compilation off the event loop."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from fastlm.sampling_params import SamplingParams
from fastlm.server.errors import APIError
from fastlm.structured_outputs import (
    BACKENDS,
    OTHER_BACKENDS,
    GrammarError,
    StructuredOutputsParams,
    with_config_defaults,
)

_LEGACY = {
    "guided_json": "json",
    "guided_regex": "regex",
    "guided_choice": "choice",
    "guided_grammar": "grammar",
    "structural_tag": "structural_tag",
}
_OPTION_FIELDS = {f.name for f in dataclasses.fields(StructuredOutputsParams)}


def check_backend(backend: Any, param: str | None) -> None:
    """llguidance, or xgrammar when installed; other named backends are a clear error."""
    if backend == "xgrammar":
        from fastlm.structured_xgrammar import PIN, available

        if not available():
            raise APIError(
                f"structured outputs backend 'xgrammar' is not installed (pip install {PIN})",
                400,
                param,
            )
        return
    if backend is None or backend in BACKENDS:
        return
    if backend in OTHER_BACKENDS:
        raise APIError(
            f"structured outputs backend {backend!r} is not available in fastlm: it serves "
            f"grammars with llguidance or xgrammar (backend one of {', '.join(BACKENDS)})",
            400,
            param,
        )
    raise APIError(
        f"unknown structured outputs backend {backend!r} (one of {', '.join(BACKENDS)})",
        400,
        param,
    )


def _make(param: str, **kwargs: Any) -> StructuredOutputsParams:
    try:
        return StructuredOutputsParams(**kwargs)
    except (TypeError, ValueError) as e:
        raise APIError(str(e), 400, param) from e


def _from_response_format(fmt: dict[str, Any]) -> StructuredOutputsParams | None:
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return _make("response_format", json_object=True)
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict | bool):
            raise APIError(
                "response_format json_schema needs a json_schema object with a schema",
                400,
                "response_format",
            )
        # OpenAI's default for a missing schema: any JSON object.
        return _make("response_format", json=spec.get("schema", {"type": "object"}))
    if kind == "structural_tag":
        tag = {k: fmt.get(k) for k in ("structures", "triggers")}
        return _make("response_format", structural_tag=tag)
    raise APIError(
        f"response_format type must be text, json_object, json_schema or structural_tag, got "
        f"{kind!r}",
        400,
        "response_format",
    )


def request_structured_outputs(
    req: Any, defaults: dict[str, Any] | None = None
) -> tuple[StructuredOutputsParams | None, str | None]:
    """The request's constraint and the field it came from; at most one source may be set.
    `defaults`: the server's --structured-outputs-config."""
    p, param = _request_structured_outputs(req)
    return with_config_defaults(p, defaults), param


def _request_structured_outputs(req: Any) -> tuple[StructuredOutputsParams | None, str | None]:
    found: list[tuple[StructuredOutputsParams | None, str]] = []
    fmt = getattr(req, "response_format", None)
    if fmt is not None:
        found.append((_from_response_format(fmt), "response_format"))
    so = getattr(req, "structured_outputs", None)
    if so is not None:
        unknown = sorted(set(so) - _OPTION_FIELDS - {"backend", "_backend"})
        if unknown:
            raise APIError(
                f"structured_outputs has unknown fields: {', '.join(unknown)}",
                400,
                "structured_outputs",
            )
        backend = so.get("backend", so.get("_backend"))
        check_backend(backend, "structured_outputs")
        opts = {k: v for k, v in so.items() if k in _OPTION_FIELDS}
        opts["backend"] = backend
        found.append((_make("structured_outputs", **opts), "structured_outputs"))
    legacy_backend = getattr(req, "guided_decoding_backend", None)
    check_backend(legacy_backend, "guided_decoding_backend")
    legacy = [name for name in _LEGACY if getattr(req, name, None) is not None]
    if legacy:
        name = legacy[0]
        if len(legacy) > 1:
            raise APIError(
                f"set only one of {', '.join(legacy)} (structured outputs)", 400, legacy[1]
            )
        ws = getattr(req, "guided_whitespace_pattern", None)
        kwargs: dict[str, Any] = {_LEGACY[name]: getattr(req, name)}
        if ws is not None:
            kwargs["whitespace_pattern"] = ws
        found.append((_make(name, backend=legacy_backend, **kwargs), name))
    elif getattr(req, "guided_whitespace_pattern", None) is not None and not found:
        raise APIError(
            "guided_whitespace_pattern needs guided_json", 400, "guided_whitespace_pattern"
        )
    for p, _ in found:  # guided_decoding_backend picks the backend of any source
        if p is not None and p.backend is None:
            p.backend = legacy_backend
    constrained = [(p, name) for p, name in found if p is not None]
    if len(found) > 1 and len(constrained) > 1:
        raise APIError(
            f"set only one of {', '.join(name for _, name in found)} (structured outputs)",
            400,
            found[1][1],
        )
    if not constrained:
        return None, None
    return constrained[0]


async def compile_grammar(runtime: Any, sampling: list[SamplingParams], param: str) -> None:
    """Validates and caches the grammar (a 400 naming `param` when invalid), waits for
    llguidance's tokenizer and makes each request's matchers with their first masks, all in
    worker threads: admitting the requests then costs the event loop nothing."""
    grammars = runtime.grammars
    if grammars is None:
        raise APIError(
            f"{param}: structured outputs need a generative model; this is a pooling model",
            400,
            param,
        )
    loop = asyncio.get_running_loop()
    for sp in sampling:
        assert sp.structured_outputs is not None
        try:
            await loop.run_in_executor(None, grammars.validate, sp.structured_outputs, param)
        except GrammarError as e:
            raise APIError(str(e), 400, e.param or param) from e
    await asyncio.wrap_future(grammars.warm_up())
    for sp in sampling:
        assert sp.structured_outputs is not None
        sp.prepared_grammars = await loop.run_in_executor(
            None, grammars.matchers, sp.structured_outputs, sp.n
        )
