"""What the completion, chat and tokenize endpoints share, re-exported from its modules:
request decoding (serving_decode.py), admission checks and the server's Context
(serving_admission.py), streaming (serving_stream.py) and logprob formatting
(serving_logprobs.py)."""

from __future__ import annotations

from fastlm.server.serving_admission import Context, ServerConfig, tool_config
from fastlm.server.serving_decode import (
    base_request_id,
    decode_request,
    decode_request_raw,
    engine_request_id,
    param_from_message,
    sampling_error,
)
from fastlm.server.serving_logprobs import MIN_LOGPROB, LogprobFormatting, top_entries
from fastlm.server.serving_stream import (
    ENGINE_ERRORS,
    SSE_DONE,
    ClientDisconnected,
    engine_error,
    merge_streams,
    now,
    sse,
    until_disconnect,
)

__all__ = [
    "ENGINE_ERRORS",
    "MIN_LOGPROB",
    "SSE_DONE",
    "ClientDisconnected",
    "Context",
    "LogprobFormatting",
    "ServerConfig",
    "base_request_id",
    "decode_request",
    "decode_request_raw",
    "engine_error",
    "engine_request_id",
    "merge_streams",
    "now",
    "param_from_message",
    "sampling_error",
    "sse",
    "top_entries",
    "tool_config",
    "until_disconnect",
]
