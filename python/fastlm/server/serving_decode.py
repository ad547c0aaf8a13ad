"""Request decoding shared by the endpoints: strict JSON bodies into msgspec Structs, request
ids, and sampling errors as 400s naming their field."""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Container
from typing import Any, TypeVar

import msgspec
from litestar import Request

from fastlm.sampling_params import SamplingParams
from fastlm.server.errors import APIError, validation_error

logger = logging.getLogger("fastlm.server")

S = TypeVar("S", bound=msgspec.Struct)

_warned_fields: set[tuple[str, str]] = set()


def decode_request(body: bytes, content_type: str | None, kind: type[S], route: str) -> S:
    return decode_request_raw(body, content_type, kind, route)[0]


def decode_request_raw(
    body: bytes, content_type: str | None, kind: type[S], route: str
) -> tuple[S, dict[str, Any]]:
    """Strictly decodes a JSON body into `kind` (no coercion), returning the raw object too;
    unknown fields are ignored with one warning per field name."""
    if content_type is None or content_type.split(";")[0].strip().lower() != "application/json":
        raise APIError(
            "Unsupported Media Type: only 'application/json' is allowed", 415, None, None
        )
    try:
        raw = msgspec.json.decode(body)
    except msgspec.DecodeError as e:
        raise validation_error(e) from e
    if not isinstance(raw, dict):
        raise APIError("The request body must be a JSON object", 400, None, "invalid_type")
    known = kind.__struct_fields__
    for key in raw:
        if key not in known and (route, key) not in _warned_fields:
            _warned_fields.add((route, key))
            logger.warning("%s: ignoring unknown field %r", route, key)
    try:
        return msgspec.convert(raw, kind, strict=True), raw
    except msgspec.ValidationError as e:
        raise validation_error(e) from e


def base_request_id(request: Request[Any, Any, Any], body_id: str | None) -> str:
    header = request.headers.get("x-request-id")
    return header or body_id or uuid.uuid4().hex


_counter = itertools.count()


def engine_request_id(response_id: str) -> str:
    # Client-chosen ids may repeat; the engine's must not.
    return f"{response_id}-{next(_counter)}"


def param_from_message(message: str, fields: Container[str]) -> str | None:
    first = message.split(" ", 1)[0].strip("`'\":,")
    return first if first in fields else None


def sampling_error(e: ValueError) -> APIError:
    msg = str(e)
    return APIError(msg, 400, param_from_message(msg, SamplingParams.__dataclass_fields__), None)
