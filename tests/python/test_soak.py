"""The 20-second CI version of bench/soak.py: mixed load (generation, streaming, n > 1,
client disconnects mid-prefill and mid-stream, bad requests) against a real server on the
tiny model. Functional books only: no 5xx, nothing running or waiting, no KV block in use.
RSS growth stays a bench figure (bench/soak.py over minutes)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx  # noqa: F401
from fixtures_server import MODEL_NAME, make_runtime, start_server

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from soak import soak  # noqa: E402


def test_soak_20_seconds(tiny_model: Any) -> None:
    runtime = make_runtime(tiny_model)
    srv = start_server(runtime)
    try:
        res = soak(srv.url, runtime, 20.0, model=MODEL_NAME, workers=4, max_tokens=24)
    finally:
        srv.stop()
    summary = res.summary()
    assert res.requests > 25, summary
    assert not res.server_errors, summary
    assert res.num_running == 0 and res.num_waiting == 0, summary
    assert res.blocks_in_use == 0, summary
    # Every kind of action ran, and the malformed ones were refused with 4xx, not served.
    assert {"completion", "chat_stream", "stream_disconnect", "abandoned", "bad_request"} <= set(
        res.actions
    ), summary
    assert 400 in res.statuses, summary
