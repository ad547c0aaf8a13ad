"""OpenAI's error envelope and the exceptions that map to it.

Every error the server returns is `{"error": {"message", "type", "param", "code"}}`. `type` uses
vLLM's names (BadRequestError, NotFoundError, ...); `code` is OpenAI's short string code or null
(OpenAI's published spec allows only a string or null there).
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException

logger = logging.getLogger("fastlm.server")

_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    413: "RequestTooLargeError",
    415: "UnsupportedMediaTypeError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


class APIError(Exception):
    """An error the client sees with `status` and OpenAI's error body."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code
        self.headers = headers


class NotSupportedError(APIError):
    def __init__(self, feature: str, param: str | None = None) -> None:
        super().__init__(f"{feature} is not supported yet by fastlm", 400, param, "not_supported")


def error_body(
    message: str, status: int, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    kind = _TYPES.get(status) or HTTPStatus(status).phrase.replace(" ", "") + "Error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(
    message: str, status: int, param: str | None = None, code: str | None = None
) -> Response[Any]:
    return Response(error_body(message, status, param, code), status_code=status)


_PATH = re.compile(r" - at `\$((?:\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\])*)`$")


def validation_error(e: msgspec.ValidationError | msgspec.DecodeError) -> APIError:
    """A msgspec error as a 400 naming the offending field ("messages[0].content")."""
    text = str(e)
    param = None
    m = _PATH.search(text)
    if m:
        text = text[: m.start()]
        param = m.group(1).lstrip(".") or None
    elif not isinstance(e, msgspec.ValidationError):  # malformed JSON (a DecodeError)
        return APIError(f"Invalid JSON body: {text}", 400, None, "invalid_json")
    if text.startswith("Object missing required field"):
        field = text.split("`")[1] if "`" in text else None
        param = f"{param}.{field}" if param and field else field
    return APIError(text, 400, param, "invalid_type" if "Expected" in text else "invalid_value")


def api_error_handler(_: Request[Any, Any, Any], exc: APIError) -> Response[Any]:
    return Response(
        error_body(exc.message, exc.status, exc.param, exc.code),
        status_code=exc.status,
        headers=exc.headers,
    )


def http_exception_handler(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    message = exc.detail or HTTPStatus(status).phrase
    if status == 404 and message == "Not Found":
        message = "Not Found: no such route"
    return Response(
        error_body(message, status, None, None),
        status_code=status,
        headers=getattr(exc, "headers", None) or None,
    )


def internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    # Never crash, never leak a traceback to the client; the log keeps it.
    logger.exception("unhandled error in %s %s", request.method, request.url.path)
    return error_response(f"Internal server error: {type(exc).__name__}", 500)


EXCEPTION_HANDLERS: dict[Any, Any] = {
    APIError: api_error_handler,
    HTTPException: http_exception_handler,
    Exception: internal_error_handler,
}
