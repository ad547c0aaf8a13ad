"""`fastlm-server` as users run it: the CLI in a subprocess with the default GGUF model
(SmolLM2-135M-Instruct), driven by the `openai` client. Start-up time, real chat output,
stop strings, disconnects (mid-prefill and mid-stream) and a clean Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

# The default model from fastlm's cache (the smollm_gguf fixture fetches it first, so the
# start-up budget never includes a download), served by the CLI in a subprocess.
pytestmark = [pytest.mark.model, pytest.mark.server, pytest.mark.slow]

STARTUP_BUDGET_S = 5.0


def _metrics(c: Any) -> dict[str, float]:
    out = {}
    for line in c.get("/metrics").text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name.split("{")[0]] = float(value)
    return out


def _post_and_hang_up(url: str, path: str, body: dict[str, Any], after: float) -> None:
    """POSTs `body`, waits `after` seconds, closes the connection (a client giving up)."""
    import json
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(url)
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode()
    with socket.create_connection((u.hostname, u.port), timeout=10) as sock:
        sock.sendall(head + payload)
        time.sleep(after)
        sock.shutdown(socket.SHUT_RDWR)


def _wait_idle(c: Any, timeout: float = 5.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        m = _metrics(c)
        idle = m["fastlm:num_requests_running"] == 0 and m["fastlm:num_requests_waiting"] == 0
        if (idle and m["fastlm:kv_cache_usage_perc"] == 0) or time.monotonic() > deadline:
            return m
        time.sleep(0.05)


class CliServer:
    def __init__(self, *args: str) -> None:
        from fastlm.server.local import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable,
            "-m",
            "fastlm.server.cli",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--uvicorn-log-level",
            "warning",
            *args,
        ]
        self.started = time.monotonic()
        # A file, not a pipe: an unread pipe would block the server once it fills up.
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            cmd, stderr=self.log, stdout=subprocess.DEVNULL, text=True, env=os.environ.copy()
        )
        self.ready_after: float | None = None

    def wait_ready(self, timeout: float = 120.0) -> float:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited: {self.output()}")
                try:
                    if c.get(f"{self.url}/health").status_code == 200:
                        self.ready_after = time.monotonic() - self.started
                        return self.ready_after
                except httpx.TransportError:
                    pass
                time.sleep(0.02)
        raise TimeoutError("fastlm-server did not become ready")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode, self.output()


@pytest.fixture(scope="module")
def cli_server(smollm_gguf: Path) -> Iterator[CliServer]:
    srv = CliServer("--served-model-name", "smollm", "default")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def client(cli_server: CliServer) -> Any:
    return openai.OpenAI(base_url=f"{cli_server.url}/v1", api_key="x", max_retries=0)


def test_help_documents_every_flag() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "fastlm.server.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in (
        "--host",
        "--port",
        "--api-key",
        "--served-model-name",
        "--dtype",
        "--max-model-len",
        "--max-num-seqs",
        "--max-num-batched-tokens",
        "--block-size",
        "--kv-cache-memory",
        "--enable-prefix-caching",
        "--no-enable-prefix-caching",
        "--scheduling-policy",
        "--seed",
        "--chat-template",
        "--chat-template-content-format",
        "--generation-config",
        "--override-generation-config",
        "--max-logprobs",
        "--enable-request-id-headers",
        "--root-path",
        "--allowed-origins",
        "--allowed-methods",
        "--allowed-headers",
        "--ssl-keyfile",
        "--ssl-certfile",
        "--uvicorn-log-level",
        "--disable-log-requests",
        "--max-log-len",
    ):
        assert flag in out, flag


def test_startup_is_fast(cli_server: CliServer) -> None:
    assert cli_server.ready_after is not None
    assert cli_server.ready_after < STARTUP_BUDGET_S, (
        f"/health took {cli_server.ready_after:.1f}s to answer 200"
    )


def test_models_and_chat(client: Any, cli_server: CliServer) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == ["smollm", "default"]
    r = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=20,
        temperature=0,
    )
    assert r.model == "smollm"
    assert "Paris" in r.choices[0].message.content
    with httpx.Client(base_url=cli_server.url) as c:
        count = c.post(
            "/tokenize",
            json={"messages": [{"role": "user", "content": "What is the capital of France?"}]},
        ).json()["count"]
    assert r.usage.prompt_tokens == count


def test_stop_strings_real_model(client: Any) -> None:
    kw = {"model": "smollm", "prompt": "1, 2, 3, 4,", "max_tokens": 20, "temperature": 0}
    full = client.completions.create(**kw).choices[0].text
    assert full.startswith(" 5, 6, 7")
    r = client.completions.create(**kw, stop=[" 7"])
    assert r.choices[0].text == " 5, 6,"
    assert r.choices[0].finish_reason == "stop"
    chunks = list(client.completions.create(**kw, stop=[", 8"], stream=True))
    text = "".join(c.choices[0].text for c in chunks)
    assert text == " 5, 6, 7"


def test_same_seed_same_text(client: Any) -> None:
    kw = {
        "model": "smollm",
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "max_tokens": 12,
        "temperature": 1.0,
        "seed": 1234,
    }
    a = client.chat.completions.create(**kw).choices[0].message.content
    b = client.chat.completions.create(**kw).choices[0].message.content
    assert a == b


GEN = "fastlm:generation_tokens_total"


def test_disconnect_mid_stream(cli_server: CliServer) -> None:
    body = {
        "model": "smollm",
        "prompt": "Write a long essay about rivers.",
        "max_tokens": 4000,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.Client(base_url=cli_server.url, timeout=60) as c:
        before = _metrics(c)[GEN]
        with c.stream("POST", "/v1/completions", json=body) as r:
            chunks = 0
            for line in r.iter_lines():
                chunks += line.startswith("data: ")
                if chunks >= 3:
                    break
        m = _wait_idle(c, timeout=60)
        assert m["fastlm:num_requests_running"] == 0
        assert m["fastlm:kv_cache_usage_perc"] == 0
        # Aborted within a few steps of the disconnect, not run on to max_tokens.
        assert m[GEN] - before < 200


def test_disconnect_mid_prefill(cli_server: CliServer) -> None:
    with httpx.Client(base_url=cli_server.url, timeout=60) as c:
        for stream in (False, True):
            # ~1750 tokens: seconds of prefill on 2 cores. A different prompt each time, so the
            # second is not served from the prefix cache.
            prompt = f"{stream} The river flows to the sea." + " The river flows on." * 350
            body = {
                "model": "smollm",
                "prompt": prompt,
                "max_tokens": 4000,
                "ignore_eos": True,
                "stream": stream,
            }
            before = _metrics(c)[GEN]
            # The client sends the request, then closes its socket mid-prefill.
            _post_and_hang_up(cli_server.url, "/v1/completions", body, after=0.3)
            # The abort lands between engine steps: the prefill step in flight finishes first
            # (it yields at most one token), then the request and its blocks are gone.
            m = _wait_idle(c, timeout=60)
            state = f"stream={stream}: {m}, generated {m[GEN] - before}"
            assert m["fastlm:num_requests_running"] == 0, state
            assert m["fastlm:num_requests_waiting"] == 0, state
            assert m["fastlm:kv_cache_usage_perc"] == 0, state
            assert m[GEN] - before <= 2, state


def test_clean_shutdown(cli_server: CliServer) -> None:
    code, err = cli_server.stop()
    assert code == 0, err
    assert "listening on http://127.0.0.1" in err
    assert "dtype" in err and "KV cache" in err
    assert "fastlm-server: stopped" in err


def test_sigterm_stops_cleanly(smollm_gguf: Path) -> None:
    srv = CliServer("--max-model-len", "512", "--kv-cache-memory", "64M")
    srv.wait_ready()
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(timeout=30) == 0, srv.output()
