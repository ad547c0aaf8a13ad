"""API safety (issue 9): salted prefix cache, per-request bounds with a flag each, and every
parameter fastlm does not implement refused with a 400 naming it (never silently ignored).
Real servers on 127.0.0.1 over the tiny Llama checkpoint with the real Llama-3 tokenizer."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import openai
import pytest
from fixtures_server import MODEL_NAME, make_runtime, start_server

MESSAGES = [{"role": "user", "content": "Say something."}]


def error_of(r: Any, status: int, param: str | None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert err["param"] == param, err
    return err


# ---- cache_salt -------------------------------------------------------------------------------


def _hits(runtime: Any) -> int:
    return int(runtime.engine.stats().prefix_cache_hits)


def _wait_idle(runtime: Any) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        s = runtime.engine.stats()
        if s.num_running == 0 and s.num_waiting == 0:
            return
        time.sleep(0.02)


def test_cache_salt_isolates_prefix_cache(client: Any, tiny_runtime: Any) -> None:
    """Same salt: the second request reuses the first's blocks; a different salt, or none,
    never does (vLLM's cache_salt)."""
    # A prompt no other test sends: several full 16-token blocks.
    prompt = f"{uuid.uuid4().hex} " + "the quick brown fox jumps over the lazy dog " * 6

    def run(salt: str | None) -> int:
        before = _hits(tiny_runtime)
        extra = {} if salt is None else {"cache_salt": salt}
        client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=1, extra_body=extra)
        _wait_idle(tiny_runtime)
        return _hits(tiny_runtime) - before

    assert run("tenant-a") == 0  # first sight
    assert run("tenant-a") >= 48  # same salt: hits its whole-block prefix
    assert run("tenant-b") == 0  # another tenant shares nothing
    assert run(None) == 0  # nor does an unsalted request
    assert run(None) >= 48  # unsalted requests share among themselves
    chat_salted = {"cache_salt": "tenant-a"}
    before = _hits(tiny_runtime)
    client.chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=1,
        extra_body=chat_salted,
    )
    _wait_idle(tiny_runtime)
    assert _hits(tiny_runtime) == before  # the chat prompt starts with other tokens


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_empty_cache_salt_is_400(http: Any, path: str) -> None:
    body: dict[str, Any] = {"cache_salt": "", "max_tokens": 1}
    body |= {"prompt": "x"} if path == "/v1/completions" else {"messages": MESSAGES}
    error_of(http.post(path, json=body), 400, "cache_salt")


# ---- parameters refused, never ignored ------------------------------------------------------


REFUSED = [
    ({"priority": 1}, "priority"),  # without --scheduling-policy priority
    ({"prompt_embeds": "AAAA"}, "prompt_embeds"),
    ({"kv_transfer_params": {"do_remote_prefill": True}}, "kv_transfer_params"),
    ({"vllm_xargs": {"k": 1}}, "vllm_xargs"),
    ({"mm_processor_kwargs": {"k": 1}}, "mm_processor_kwargs"),
    ({"stream": True, "prompt_logprobs": 1}, "prompt_logprobs"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"structural_tag": '{"type": "structural_tag"}'}, "structural_tag"),
    ({"guided_decoding_backend": "outlines"}, "guided_decoding_backend"),
    ({"guided_whitespace_pattern": " *"}, "guided_whitespace_pattern"),
    ({"allowed_token_ids": []}, "allowed_token_ids"),
    ({"top_k": -2}, "top_k"),
]


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
@pytest.mark.parametrize("extra,param", REFUSED)
def test_unimplemented_parameters_are_400(
    http: Any, path: str, extra: dict[str, Any], param: str
) -> None:
    body: dict[str, Any] = {"max_tokens": 2, **extra}
    body |= {"prompt": "hello"} if path == "/v1/completions" else {"messages": MESSAGES}
    error_of(http.post(path, json=body), 400, param)


def test_top_k_minus_one_and_zero_still_mean_off(http: Any) -> None:
    for k in (-1, 0):
        r = http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2, "top_k": k})
        assert r.status_code == 200, r.text


def test_openai_client_sees_refusals(client: Any) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=MODEL_NAME,
            messages=MESSAGES,
            stream_options={"include_usage": True},
        )
    assert e.value.body["param"] == "stream_options"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=MODEL_NAME, messages=MESSAGES, extra_body={"priority": 5}
        )
    assert e.value.body["param"] == "priority"


def tiny_runtime_with(tiny_model: Any, **engine: Any) -> Any:
    """A fresh engine on the tiny model, with EngineArgs overrides `engine`."""
    from fastlm.runtime import EngineArgs, Runtime

    args = {"dtype": "float32", "max_model_len": 128, "kv_cache_memory": 1 << 22, **engine}
    return Runtime(EngineArgs(model=str(tiny_model), **args))


def tiny_server(tiny_model: Any, **engine: Any) -> Any:
    """A server over its own engine on the tiny model, with EngineArgs overrides `engine`."""
    return start_server(tiny_runtime_with(tiny_model, **engine))


def test_priority_is_honoured_under_priority_scheduling(tiny_model: Any) -> None:
    srv = tiny_server(tiny_model, scheduling_policy="priority")
    try:
        r = httpx.post(
            srv.url + "/v1/chat/completions",
            json={"messages": MESSAGES, "max_tokens": 2, "priority": -3},
            timeout=60,
        )
        assert r.status_code == 200, r.text
    finally:
        srv.stop()


# ---- bounds ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bounded(tiny_model: Any) -> Any:
    srv = start_server(
        make_runtime(tiny_model),
        max_n=3,
        max_logprobs=4,
        max_tokens_limit=8,
        max_stop_strings=2,
        max_logit_bias=2,
    )
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        yield c
    srv.stop()


@pytest.mark.parametrize(
    "ok,too_much,param",
    [
        ({"n": 3}, {"n": 4}, "n"),
        ({"logprobs": 4}, {"logprobs": 5}, "logprobs"),
        ({"prompt_logprobs": 4}, {"prompt_logprobs": 5}, "prompt_logprobs"),
        ({"max_tokens": 8}, {"max_tokens": 9}, "max_tokens"),
        ({"stop": ["a", "b"]}, {"stop": ["a", "b", "c"]}, "stop"),
        ({"logit_bias": {"1": 1, "2": 1}}, {"logit_bias": {"1": 1, "2": 1, "3": 1}}, "logit_bias"),
    ],
)
def test_bounds_each_with_a_flag(
    bounded: Any, ok: dict[str, Any], too_much: dict[str, Any], param: str
) -> None:
    base = {"prompt": "hello", "max_tokens": 2}
    r = bounded.post("/v1/completions", json={**base, **ok})
    assert r.status_code == 200, r.text
    err = error_of(bounded.post("/v1/completions", json={**base, **too_much}), 400, param)
    assert err["type"] == "BadRequestError"


def test_chat_bounds(bounded: Any) -> None:
    base = {"messages": MESSAGES}
    error_of(
        bounded.post("/v1/chat/completions", json={**base, "max_completion_tokens": 9}),
        400,
        "max_completion_tokens",
    )
    error_of(
        bounded.post("/v1/chat/completions", json={**base, "logprobs": True, "top_logprobs": 5}),
        400,
        "top_logprobs",
    )
    # Unset max_tokens is capped by the limit rather than refused.
    r = bounded.post("/v1/chat/completions", json={**base, "ignore_eos": True})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 8


def test_body_size_limit_is_413(tiny_model: Any) -> None:
    srv = start_server(make_runtime(tiny_model), max_body_size=2000)
    try:
        for path in ("/v1/chat/completions", "/v1/embeddings", "/tokenize"):
            r = httpx.post(srv.url + path, json={"messages": MESSAGES, "input": "x" * 4000})
            error_of(r, 413, None)
    finally:
        srv.stop()


# ---- overload and shutdown --------------------------------------------------------------------


def test_waiting_queue_limit_is_503_with_retry_after(tiny_model: Any) -> None:
    """With --max-waiting-requests 1 and one sequence at a time, a request whose n=3 children
    queue behind each other fills the waiting queue: the next request gets 503 + Retry-After,
    tokenize still works, and once the queue drains requests are admitted again."""
    import threading

    runtime = tiny_runtime_with(tiny_model, max_model_len=256, max_num_seqs=1)
    srv = start_server(runtime, max_waiting_requests=1)
    try:
        body = {"prompt": "hello", "max_tokens": 200, "ignore_eos": True, "n": 3}
        results: list[Any] = []
        t = threading.Thread(
            target=lambda: results.append(
                httpx.post(srv.url + "/v1/completions", json=body, timeout=120)
            )
        )
        t.start()
        deadline = time.monotonic() + 30
        while runtime.engine.stats().num_waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        r = httpx.post(srv.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1})
        err = error_of(r, 503, None)
        assert err["code"] == "overloaded" and r.headers["retry-after"] == "1"
        assert httpx.post(srv.url + "/tokenize", json={"prompt": "x"}).status_code == 200
        t.join(120)
        assert results and results[0].status_code == 200
        ok = httpx.post(srv.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1})
        assert ok.status_code == 200, ok.text
    finally:
        srv.stop()


def _serve_cli(tiny_model: Any, *flags: str) -> tuple[Any, str]:
    import os
    import subprocess
    import sys

    from fastlm.server.local import free_port

    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fastlm.server.cli",
            str(tiny_model),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--dtype",
            "float32",
            "--max-model-len",
            "256",
            "--kv-cache-memory",
            "4M",
            "--max-num-seqs",
            "1",
            *flags,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the server did not come up")


@pytest.mark.parametrize("timeout,finishes", [("60", True), ("0.5", False)])
def test_sigterm_drains_then_exits_zero(tiny_model: Any, timeout: str, finishes: bool) -> None:
    """SIGTERM: in-flight requests finish within --shutdown-timeout (or are cut off after it),
    new connections are refused, and the process exits 0."""
    import signal

    proc, url = _serve_cli(tiny_model, "--shutdown-timeout", timeout)
    try:
        # n=3 children one at a time: seconds of work on the tiny model.
        body = {"prompt": "hello", "max_tokens": 200, "ignore_eos": True, "n": 3, "stream": True}
        chunks = 0
        ended_cleanly = False
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=120) as r:
            assert r.status_code == 200
            try:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        chunks += 1
                        if chunks == 1:
                            proc.send_signal(signal.SIGTERM)
                        if line == "data: [DONE]":
                            ended_cleanly = True
            except httpx.HTTPError:
                pass  # cut off at the shutdown timeout
        assert ended_cleanly == finishes
        assert proc.wait(60) == 0
        with pytest.raises(httpx.HTTPError):
            httpx.get(url + "/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_engine_death_is_500_and_health_500(tiny_model: Any) -> None:
    """An exception inside the engine step (the fault-injection hook): the live request gets a
    500 naming the failure, later requests too, /health turns 500, and the server's
    engine-dead callback fires (the CLI exits non-zero on it)."""
    from fastlm.async_engine import AsyncEngine
    from fastlm.server.local import ServerThread
    from fastlm.server.serving import ServerConfig

    runtime = tiny_runtime_with(tiny_model, fault_after_steps=5)
    config = ServerConfig(served_model_names=[MODEL_NAME], model_path=str(tiny_model))
    engine = AsyncEngine(runtime)
    srv = ServerThread(config, engine=engine).start()
    dead: list[str] = []
    engine.on_dead = dead.append  # what build_app's on_engine_dead (the CLI's exit) receives
    try:
        assert httpx.get(srv.url + "/health").status_code == 200
        body = {"prompt": "hello", "max_tokens": 50, "ignore_eos": True}
        err = error_of(httpx.post(srv.url + "/v1/completions", json=body, timeout=60), 500, None)
        assert "injected fault" in err["message"] and err["code"] == "engine_dead"
        health = httpx.get(srv.url + "/health")
        assert health.status_code == 500 and "injected fault" in health.text
        error_of(httpx.post(srv.url + "/v1/completions", json=body, timeout=60), 500, None)
        assert dead and "injected fault" in dead[0]
    finally:
        srv.stop()


def test_engine_death_exits_non_zero(tiny_model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTLM_TEST_FAULT_AFTER_STEPS", "3")
    proc, url = _serve_cli(tiny_model)
    try:
        body = {"prompt": "hello", "max_tokens": 50, "ignore_eos": True, "stream": True}
        r = httpx.post(url + "/v1/completions", json=body, timeout=60)
        assert r.status_code == 200  # the stream had started; the error arrives in it
        assert '"code":"engine_dead"' in r.text.replace(" ", "")
        assert proc.wait(60) == 1
        assert proc.stderr is not None and b"injected fault" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_more_load_than_the_kv_cache_holds_queues_and_preempts(tiny_model: Any) -> None:
    """Eight concurrent requests that together need far more KV blocks than the cache has: all
    succeed with their full answers (no 5xx), the engine preempts and recomputes, and at the end
    nothing runs and every block is free again."""
    from concurrent.futures import ThreadPoolExecutor

    runtime = tiny_runtime_with(tiny_model, max_model_len=128, kv_cache_memory=1 << 17)
    blocks = runtime.engine.num_blocks
    # Each request grows to 8 + 60 tokens = 5 blocks of 16.
    assert 8 <= blocks < 8 * 5 // 2, blocks
    srv = start_server(runtime)
    try:
        body = {"prompt": "one two three four", "max_tokens": 60, "ignore_eos": True}
        with ThreadPoolExecutor(8) as pool:
            replies = list(
                pool.map(
                    lambda i: httpx.post(
                        srv.url + "/v1/completions", json={**body, "seed": i}, timeout=300
                    ),
                    range(8),
                )
            )
        assert [r.status_code for r in replies] == [200] * 8, [r.text for r in replies]
        assert all(r.json()["usage"]["completion_tokens"] == 60 for r in replies)
        stats = runtime.engine.stats()
        assert stats.num_preemptions > 0
        assert stats.num_running == 0 and stats.num_waiting == 0
        assert stats.num_free_blocks == stats.num_blocks
    finally:
        srv.stop()
