"""fastlm-server's OpenAI API, driven by the official `openai` client and raw HTTP against a
real server on 127.0.0.1 serving a tiny random Llama (real Llama-3 tokenizer). Every response
shape is checked against OpenAI's published spec."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest
from fixtures_server import MODEL_NAME, TINY_MAX_MODEL_LEN, make_runtime, start_server


@pytest.fixture(scope="module")
def tok(tiny_runtime: Any) -> Any:
    return tiny_runtime.tokenizer


def sse_events(raw: bytes) -> list[Any]:
    """Parses an SSE body, checking OpenAI's exact framing: `data: <json>\\n\\n` ... `[DONE]`."""
    assert raw.endswith(b"data: [DONE]\n\n"), raw[-200:]
    parts = raw.split(b"\n\n")
    assert parts[-1] == b""
    events = []
    for part in parts[:-2]:
        assert part.startswith(b"data: ") and b"\n" not in part, part
        events.append(json.loads(part[len(b"data: ") :]))
    assert parts[-2] == b"data: [DONE]"
    return events


def validate_completion_chunk(schema: Any, chunk: dict[str, Any]) -> None:
    """Streamed completion chunks share CreateCompletionResponse, whose finish_reason is not
    nullable in the spec, yet OpenAI (and vLLM) stream null until the last chunk."""
    copy = json.loads(json.dumps(chunk))
    for c in copy["choices"]:
        if c["finish_reason"] is None:
            c["finish_reason"] = "length"
    schema.validate("CreateCompletionResponse", copy)


def post(http: Any, path: str, body: Any, **kw: Any) -> Any:
    return http.post(path, json=body, **kw)


def assert_error(r: Any, status: int, param: str | None, schema: Any) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    schema.validate("ErrorResponse", body)
    assert body["error"]["param"] == param, body
    assert body["error"]["message"]
    return body["error"]


def engine_idle(runtime: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        s = runtime.engine.stats()
        if (s.num_running == 0 and s.num_waiting == 0 and s.num_free_blocks == s.num_blocks) or (
            time.monotonic() > deadline
        ):
            return s
        time.sleep(0.02)


# ---- basic endpoints ----------------------------------------------------------------------


def test_health_version_models(http: Any, client: Any) -> None:
    assert http.get("/health").status_code == 200
    assert http.get("/ping").status_code == 200
    assert http.get("/version").json()["version"]
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]
    assert models.data[0].model_extra["max_model_len"] == TINY_MAX_MODEL_LEN


def test_health_is_503_until_the_engine_is_loaded(tiny_model: Any) -> None:
    from fastlm.runtime import EngineArgs
    from fastlm.server.local import ServerThread
    from fastlm.server.serving import ServerConfig

    args = EngineArgs(
        model=str(tiny_model), dtype="float32", max_model_len=64, kv_cache_memory=4 * 2**20
    )
    srv = ServerThread(ServerConfig([MODEL_NAME], str(tiny_model)), engine_args=args)
    srv.start(wait_ready=False)
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            seen = set()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                code = c.get("/health").status_code
                seen.add(code)
                if code == 200:
                    break
                r = c.post("/v1/completions", json={"prompt": "hi"})
                assert r.status_code in (200, 503)
                time.sleep(0.01)
            assert 200 in seen and seen <= {200, 503}
            r = c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2})
            assert r.status_code == 200
    finally:
        srv.stop()


# ---- completions ----------------------------------------------------------------------------


def test_completion_usage_matches_tokenizer(client: Any, tok: Any, openai_schema: Any) -> None:
    prompt = "The capital of France is"
    r = client.completions.create(
        model=MODEL_NAME,
        prompt=prompt,
        max_tokens=6,
        temperature=0,
        extra_body={"ignore_eos": True, "return_token_ids": True},
    )
    openai_schema.validate("CreateCompletionResponse", r.model_dump(exclude_unset=True))
    assert r.id.startswith("cmpl-") and r.object == "text_completion"
    assert r.usage.prompt_tokens == len(tok.encode(prompt))
    assert r.usage.completion_tokens == 6
    assert r.usage.total_tokens == r.usage.prompt_tokens + 6
    choice = r.choices[0]
    assert choice.finish_reason == "length"
    ids = choice.model_extra["token_ids"]
    assert len(ids) == 6
    assert choice.text == tok.decode(ids, skip_special_tokens=True)
    assert choice.model_extra["prompt_token_ids"] == tok.encode(prompt)


def test_completion_stream_equals_non_stream(client: Any, http: Any, openai_schema: Any) -> None:
    body = {
        "model": MODEL_NAME,
        "prompt": "Once upon a time",
        "max_tokens": 12,
        "temperature": 0,
        "ignore_eos": True,
    }
    full = post(http, "/v1/completions", body).json()
    raw = post(
        http, "/v1/completions", {**body, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = sse_events(raw.content)
    for e in events:
        validate_completion_chunk(openai_schema, e)
    *chunks, last = events
    assert last["choices"] == [] and last["usage"] == full["usage"]
    assert all("usage" not in c for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == full["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["id"] == chunks[0]["id"] for c in chunks)
    # No include_usage: no usage anywhere.
    events = sse_events(post(http, "/v1/completions", {**body, "stream": True}).content)
    assert all("usage" not in e for e in events)
    # The client library sees the same text.
    stream = client.completions.create(
        model=MODEL_NAME,
        prompt=body["prompt"],
        max_tokens=12,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    assert "".join(c.choices[0].text for c in stream) == full["choices"][0]["text"]


def test_continuous_usage_stats(http: Any) -> None:
    events = sse_events(
        post(
            http,
            "/v1/completions",
            {
                "prompt": "a b c",
                "max_tokens": 4,
                "ignore_eos": True,
                "stream": True,
                "stream_options": {"include_usage": True, "continuous_usage_stats": True},
            },
        ).content
    )
    assert all("usage" in e for e in events)
    assert events[-1]["usage"]["completion_tokens"] == 4


def test_n_and_multiple_prompts(client: Any, openai_schema: Any) -> None:
    r = client.completions.create(
        model=MODEL_NAME,
        prompt="Hello",
        n=2,
        max_tokens=5,
        temperature=1.0,
        seed=3,
        extra_body={"ignore_eos": True},
    )
    openai_schema.validate("CreateCompletionResponse", r.model_dump(exclude_unset=True))
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert r.usage.completion_tokens == 10
    r = client.completions.create(
        model=MODEL_NAME,
        prompt=["Hello", "Good morning"],
        n=2,
        max_tokens=3,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text == r.choices[1].text  # greedy: same prompt, same text
    assert r.usage.completion_tokens == 12
    single = client.completions.create(
        model=MODEL_NAME,
        prompt="Good morning",
        max_tokens=3,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert r.choices[2].text == single.choices[0].text


def test_token_id_prompts(client: Any, tok: Any) -> None:
    ids = tok.encode("Hello world")
    by_text = client.completions.create(
        model=MODEL_NAME,
        prompt="Hello world",
        max_tokens=4,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    by_ids = client.completions.create(
        model=MODEL_NAME, prompt=ids, max_tokens=4, temperature=0, extra_body={"ignore_eos": True}
    )
    assert by_ids.choices[0].text == by_text.choices[0].text
    batch = client.completions.create(
        model=MODEL_NAME,
        prompt=[ids, ids[:2]],
        max_tokens=2,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert len(batch.choices) == 2
    assert batch.usage.prompt_tokens == len(ids) + 2


def test_seed_reproducible(client: Any) -> None:
    def run(seed: int) -> str:
        r = client.completions.create(
            model=MODEL_NAME,
            prompt="Random words:",
            max_tokens=16,
            temperature=1.0,
            seed=seed,
            extra_body={"ignore_eos": True},
        )
        return r.choices[0].text

    a, b, c = run(7), run(7), run(8)
    assert a == b
    assert a != c


def test_completion_logprobs(client: Any, openai_schema: Any) -> None:
    r = client.completions.create(
        model=MODEL_NAME,
        prompt="Count: one two",
        max_tokens=5,
        temperature=0,
        logprobs=3,
        extra_body={"ignore_eos": True},
    )
    openai_schema.validate("CreateCompletionResponse", r.model_dump(exclude_unset=True))
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset[0] == 0
    for i in range(1, 5):
        assert lp.text_offset[i] == lp.text_offset[i - 1] + len(lp.tokens[i - 1])
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert value <= 0.0
        assert 3 <= len(top) <= 4
        # greedy: the chosen token is the most likely one
        assert value == pytest.approx(max(top.values()), abs=1e-5)
        assert top[token] == pytest.approx(value, abs=1e-6)


def test_echo(client: Any, tok: Any) -> None:
    prompt = "Echo this prompt"
    r = client.completions.create(
        model=MODEL_NAME,
        prompt=prompt,
        max_tokens=3,
        echo=True,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    plain = client.completions.create(
        model=MODEL_NAME,
        prompt=prompt,
        max_tokens=3,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert r.choices[0].text == prompt + plain.choices[0].text


def test_echo_scores_the_prompt(client: Any, tok: Any) -> None:
    """lm-evaluation-harness' loglikelihood: echo + max_tokens 0 + logprobs."""
    prompt = "The quick brown fox"
    r = client.completions.create(
        model=MODEL_NAME, prompt=prompt, max_tokens=0, echo=True, logprobs=1, temperature=0
    )
    choice = r.choices[0]
    assert choice.text == prompt
    lp = choice.logprobs
    n = len(tok.encode(prompt))
    assert len(lp.tokens) == len(lp.token_logprobs) == n
    assert lp.token_logprobs[0] is None
    assert all(isinstance(v, float) and v <= 0 for v in lp.token_logprobs[1:])
    assert r.usage.prompt_tokens == n and r.usage.completion_tokens == 0


def _greedy(client: Any, prompt: str, n: int, **extra: Any) -> Any:
    return client.completions.create(
        model=MODEL_NAME,
        prompt=prompt,
        max_tokens=n,
        temperature=0,
        extra_body={"ignore_eos": True, **extra},
    )


def test_stop_strings(client: Any, http: Any) -> None:
    prompt = "Stop test:"
    full = _greedy(client, prompt, 24).choices[0].text
    # A stop string taken from the middle of the greedy text: the output ends right before it.
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert len(stop) == 3 and stop.strip()
    cut = full.index(stop)
    r = _greedy(client, prompt, 24, stop=[stop])
    assert r.choices[0].text == full[:cut]
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].model_extra["stop_reason"] == stop
    r = _greedy(client, prompt, 24, stop=[stop], include_stop_str_in_output=True)
    assert r.choices[0].text == full[:cut] + stop
    # Streaming holds the stop string back: it never leaks into any chunk.
    events = sse_events(
        post(
            http,
            "/v1/completions",
            {
                "prompt": prompt,
                "max_tokens": 24,
                "temperature": 0,
                "ignore_eos": True,
                "stop": stop,
                "stream": True,
            },
        ).content
    )
    text = "".join(e["choices"][0]["text"] for e in events)
    assert text == full[:cut]
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


def test_stop_token_ids_and_min_tokens(client: Any, tok: Any) -> None:
    full = _greedy(client, "ids:", 10, return_token_ids=True).choices[0]
    ids = full.model_extra["token_ids"]
    r = _greedy(client, "ids:", 10, stop_token_ids=[ids[3]], return_token_ids=True)
    first = ids.index(ids[3])
    assert r.choices[0].model_extra["token_ids"] == ids[: first + 1]
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].model_extra["stop_reason"] == ids[3]


def test_return_tokens_as_token_ids(client: Any) -> None:
    r = client.completions.create(
        model=MODEL_NAME,
        prompt="ids:",
        max_tokens=3,
        temperature=0,
        logprobs=1,
        extra_body={
            "ignore_eos": True,
            "return_tokens_as_token_ids": True,
            "return_token_ids": True,
        },
    )
    ids = r.choices[0].model_extra["token_ids"]
    assert r.choices[0].logprobs.tokens == [f"token_id:{i}" for i in ids]


def test_truncate_prompt_tokens(client: Any, http: Any, openai_schema: Any) -> None:
    long_ids = [100 + i for i in range(TINY_MAX_MODEL_LEN + 20)]
    err = assert_error(
        post(http, "/v1/completions", {"prompt": long_ids, "max_tokens": 2}),
        400,
        "prompt",
        openai_schema,
    )
    assert str(TINY_MAX_MODEL_LEN) in err["message"] and str(len(long_ids)) in err["message"]
    r = client.completions.create(
        model=MODEL_NAME, prompt=long_ids, max_tokens=2, extra_body={"truncate_prompt_tokens": 10}
    )
    assert r.usage.prompt_tokens == 10


# ---- chat -----------------------------------------------------------------------------------


MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say something."},
]


def test_chat(client: Any, tiny_runtime: Any, openai_schema: Any) -> None:
    r = client.chat.completions.create(
        model=MODEL_NAME,
        messages=MESSAGES,
        max_tokens=5,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    openai_schema.validate("CreateChatCompletionResponse", r.model_dump(exclude_unset=True))
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    from fastlm.chat_template import render_chat

    tok = tiny_runtime.tokenizer
    text = render_chat(
        tok.get_chat_template(),
        MESSAGES,
        add_generation_prompt=True,
        special_tokens=tok.special_tokens_map,
    )
    assert r.usage.prompt_tokens == len(tok.encode(text, add_special_tokens=False))
    assert r.usage.completion_tokens == 5
    r2 = client.chat.completions.create(
        model=MODEL_NAME,
        messages=MESSAGES,
        max_completion_tokens=5,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert r2.choices[0].message.content == r.choices[0].message.content


def test_chat_typed_parts_equal_string_content(client: Any) -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "Say something."}]}]
    a = client.chat.completions.create(
        model=MODEL_NAME,
        messages=parts,
        max_tokens=4,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    b = client.chat.completions.create(
        model=MODEL_NAME,
        messages=[MESSAGES[1]],
        max_tokens=4,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.prompt_tokens == b.usage.prompt_tokens


def test_chat_stream(client: Any, http: Any, openai_schema: Any) -> None:
    body = {
        "model": MODEL_NAME,
        "messages": MESSAGES,
        "max_tokens": 8,
        "temperature": 0,
        "ignore_eos": True,
        "n": 2,
        "logprobs": True,
        "top_logprobs": 2,
    }
    full = post(http, "/v1/chat/completions", body).json()
    openai_schema.validate("CreateChatCompletionResponse", full)
    events = sse_events(
        post(
            http,
            "/v1/chat/completions",
            {**body, "stream": True, "stream_options": {"include_usage": True}},
        ).content
    )
    for e in events:
        openai_schema.validate("CreateChatCompletionStreamResponse", e)
        assert e["object"] == "chat.completion.chunk"
    *chunks, last = events
    assert last["choices"] == [] and last["usage"] == full["usage"]
    for i in range(2):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == i]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert (
            "".join(m["delta"].get("content", "") for m in mine)
            == (full["choices"][i]["message"]["content"])
        )
        assert mine[-1]["finish_reason"] == "length"
        assert all(m["finish_reason"] is None for m in mine[:-1])
        streamed = [x for m in mine if m["logprobs"] for x in m["logprobs"]["content"]]
        expected = full["choices"][i]["logprobs"]["content"]
        # Same tokens; logprobs equal up to float noise (the two runs batch differently).
        assert [x["token"] for x in streamed] == [x["token"] for x in expected]
        for got, want in zip(streamed, expected, strict=True):
            assert got["logprob"] == pytest.approx(want["logprob"], abs=1e-3)
            assert len(got["top_logprobs"]) == len(want["top_logprobs"]) == 2
    # The client library parses it too.
    stream = client.chat.completions.create(
        model=MODEL_NAME,
        messages=MESSAGES,
        max_tokens=8,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == full["choices"][0]["message"]["content"]


def test_chat_logprobs(client: Any, openai_schema: Any) -> None:
    r = client.chat.completions.create(
        model=MODEL_NAME,
        messages=MESSAGES,
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
        extra_body={"ignore_eos": True},
    )
    content = r.choices[0].logprobs.content
    assert len(content) == 4
    assert "".join(c.token for c in content) == r.choices[0].message.content
    for c in content:
        assert len(c.top_logprobs) == 3
        assert c.top_logprobs[0].token == c.token  # greedy
        assert c.logprob == pytest.approx(c.top_logprobs[0].logprob, abs=1e-6)
        assert [t.logprob for t in c.top_logprobs] == sorted(
            (t.logprob for t in c.top_logprobs), reverse=True
        )
        assert c.bytes == list(c.token.encode())


def test_chat_echo_and_continue(client: Any) -> None:
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Well,"}]
    r = client.chat.completions.create(
        model=MODEL_NAME,
        messages=msgs,
        max_tokens=3,
        temperature=0,
        extra_body={
            "ignore_eos": True,
            "echo": True,
            "add_generation_prompt": False,
            "continue_final_message": True,
        },
    )
    assert r.choices[0].message.content.startswith("Well,")


# ---- request ids, auth, CORS, root path -----------------------------------------------------


def test_request_ids(http: Any, client: Any) -> None:
    r = post(
        http,
        "/v1/completions",
        {"prompt": "x", "max_tokens": 1},
        headers={"X-Request-Id": "abc123"},
    )
    assert r.json()["id"] == "cmpl-abc123"
    r = post(
        http,
        "/v1/chat/completions",
        {"messages": MESSAGES, "max_tokens": 1, "request_id": "body-id"},
    )
    assert r.json()["id"] == "chatcmpl-body-id"
    assert "x-request-id" not in r.headers  # only with --enable-request-id-headers
    # The same client id twice at once is fine (engine ids stay unique).
    r = client.completions.create(
        model=MODEL_NAME, prompt=["a", "b"], max_tokens=1, extra_headers={"X-Request-Id": "same"}
    )
    assert r.id == "cmpl-same"


def test_request_id_headers(tiny_model: Any) -> None:
    srv = start_server(make_runtime(tiny_model), enable_request_id_headers=True)
    try:
        with httpx.Client(base_url=srv.url) as c:
            r = c.post(
                "/v1/completions",
                json={"prompt": "x", "max_tokens": 1},
                headers={"X-Request-Id": "hdr-1"},
            )
            assert r.headers["x-request-id"] == "hdr-1"
            assert r.json()["id"] == "cmpl-hdr-1"
            assert c.get("/health").headers["x-request-id"]
    finally:
        srv.stop()


def test_api_key(tiny_model: Any, openai_schema: Any) -> None:
    srv = start_server(make_runtime(tiny_model), api_keys=["sk-right", "sk-other"])
    try:
        good = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="sk-right", max_retries=0)
        assert good.completions.create(model=MODEL_NAME, prompt="x", max_tokens=1).choices
        other = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="sk-other", max_retries=0)
        assert other.models.list().data
        bad = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="sk-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.completions.create(model=MODEL_NAME, prompt="x", max_tokens=1)
        with httpx.Client(base_url=srv.url) as c:
            assert_error(c.get("/v1/models"), 401, None, openai_schema)
            assert c.get("/health").status_code == 200  # not under /v1
            assert c.get("/metrics").status_code == 200
    finally:
        srv.stop()


def test_cors_and_root_path(tiny_model: Any) -> None:
    from fastlm.server.app import CorsOptions

    srv = start_server(
        make_runtime(tiny_model),
        cors=CorsOptions(["https://ui.example"], ["*"], ["*"]),
        root_path="/api",
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{srv.port}") as c:
            r = c.options(
                "/api/v1/completions",
                headers={
                    "Origin": "https://ui.example",
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "content-type",
                },
            )
            assert r.status_code in (200, 204)
            assert r.headers["access-control-allow-origin"] == "https://ui.example"
            r = c.post(
                "/api/v1/completions",
                json={"prompt": "x", "max_tokens": 1},
                headers={"Origin": "https://ui.example"},
            )
            assert r.status_code == 200
            assert r.headers["access-control-allow-origin"] == "https://ui.example"
            assert c.get("/api/health").status_code == 200
    finally:
        srv.stop()


# ---- validation and errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/completions", {"prompt": "x", "max_tokens": "5"}, 400, "max_tokens"),
        ("/v1/completions", {"prompt": "x", "temperature": "0"}, 400, "temperature"),
        ("/v1/completions", {"prompt": "x", "echo": 1}, 400, "echo"),
        ("/v1/completions", {"prompt": "x", "stop": 5}, 400, "stop"),
        (
            "/v1/completions",
            {"prompt": "x", "stream_options": {"include_usage": "yes"}},
            400,
            "stream_options.include_usage",
        ),
        ("/v1/completions", {"max_tokens": 2}, 400, "prompt"),
        ("/v1/completions", {"prompt": [1, "a"]}, 400, "prompt"),
        ("/v1/completions", {"prompt": []}, 400, "prompt"),
        ("/v1/completions", {"prompt": [10**9]}, 400, "prompt"),
        ("/v1/completions", {"prompt": "x", "model": "nope"}, 404, "model"),
        ("/v1/completions", {"prompt": "x", "suffix": "y"}, 400, "suffix"),
        ("/v1/completions", {"prompt": "x", "n": 1000}, 400, "n"),
        ("/v1/completions", {"prompt": "x", "n": 0}, 400, "n"),
        ("/v1/completions", {"prompt": "x", "logprobs": 50}, 400, "logprobs"),
        ("/v1/completions", {"prompt": "x", "temperature": -1}, 400, "temperature"),
        ("/v1/completions", {"prompt": "x", "top_p": 0}, 400, "top_p"),
        ("/v1/completions", {"prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
        ("/v1/completions", {"prompt": "x", "max_tokens": 10_000}, 400, "max_tokens"),
        ("/v1/completions", {"prompt": "x", "stop": [""]}, 400, "stop"),
        ("/v1/completions", {"prompt": "x", "logit_bias": {"a": 1}}, 400, "logit_bias"),
        ("/v1/completions", {"prompt": "x", "stop_token_ids": [-1]}, 400, "stop_token_ids"),
        ("/v1/completions", {"prompt": "x", "guided_json": {"type": 5}}, 400, "guided_json"),
        (
            "/v1/completions",
            {"prompt": "x", "response_format": {"type": "xml"}},
            400,
            "response_format",
        ),
        ("/v1/completions", {"prompt": "x", "use_beam_search": True}, 400, "use_beam_search"),
        (
            "/v1/completions",
            {"prompt": "x", "truncate_prompt_tokens": 10_000},
            400,
            "truncate_prompt_tokens",
        ),
        ("/v1/chat/completions", {"messages": "hi"}, 400, "messages"),
        ("/v1/chat/completions", {}, 400, "messages"),
        ("/v1/chat/completions", {"messages": []}, 400, "messages"),
        ("/v1/chat/completions", {"messages": [{"content": "x"}]}, 400, "messages[0].role"),
        (
            "/v1/chat/completions",
            {"messages": MESSAGES, "max_completion_tokens": "3"},
            400,
            "max_completion_tokens",
        ),
        ("/v1/chat/completions", {"messages": MESSAGES, "top_logprobs": 2}, 400, "top_logprobs"),
        (
            "/v1/chat/completions",
            {"messages": MESSAGES, "logprobs": True, "top_logprobs": 99},
            400,
            "top_logprobs",
        ),
        (
            "/v1/chat/completions",
            {
                "messages": MESSAGES,
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            },
            400,
            "tool_choice",  # tools default it to auto, which needs --enable-auto-tool-choice
        ),
        (
            "/v1/chat/completions",
            {"messages": MESSAGES, "tool_choice": "required"},
            400,
            "tool_choice",
        ),
        (
            "/v1/chat/completions",
            {
                "messages": MESSAGES,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": 5}},
                },
            },
            400,
            "response_format",
        ),
        (
            "/v1/chat/completions",
            {"messages": MESSAGES, "add_generation_prompt": True, "continue_final_message": True},
            400,
            "continue_final_message",
        ),
        (
            "/v1/chat/completions",
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "http://x"}}],
                    }
                ]
            },
            400,
            "messages[0].content[0]",
        ),
        (
            "/v1/chat/completions",
            {"messages": MESSAGES, "chat_template": "{{ broken"},
            400,
            "messages",
        ),
        ("/tokenize", {"prompt": 5}, 400, "prompt"),
        ("/detokenize", {"tokens": [10**9]}, 400, "tokens"),
    ],
)
def test_validation_errors(
    http: Any, openai_schema: Any, path: str, body: Any, status: int, param: str | None
) -> None:
    assert_error(post(http, path, body), status, param, openai_schema)


def test_protocol_errors(http: Any, openai_schema: Any, client: Any) -> None:
    r = http.post(
        "/v1/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_error(r, 400, None, openai_schema)
    r = http.post(
        "/v1/completions", content=b"[1, 2]", headers={"content-type": "application/json"}
    )
    assert_error(r, 400, None, openai_schema)
    r = http.post(
        "/v1/completions", content=b'{"prompt": "x"}', headers={"content-type": "text/plain"}
    )
    assert_error(r, 415, None, openai_schema)
    assert_error(http.get("/v1/nothing"), 404, None, openai_schema)
    assert_error(http.get("/v1/completions"), 405, None, openai_schema)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL_NAME, prompt="x", extra_body={"max_tokens": "5"})
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="missing", prompt="x")
    # Unknown fields are ignored.
    assert (
        post(http, "/v1/completions", {"prompt": "x", "max_tokens": 1, "frobnicate": 1}).status_code
        == 200
    )


def test_body_too_large(tiny_model: Any, openai_schema: Any) -> None:
    srv = start_server(make_runtime(tiny_model), max_body_size=1000)
    try:
        with httpx.Client(base_url=srv.url) as c:
            r = c.post("/v1/completions", json={"prompt": "x" * 5000})
            assert_error(r, 413, None, openai_schema)
    finally:
        srv.stop()


# ---- tokenize, metrics ----------------------------------------------------------------------


def test_tokenize_detokenize(http: Any, tok: Any) -> None:
    r = post(http, "/tokenize", {"prompt": "Hello world", "return_token_strs": True}).json()
    assert r["tokens"] == tok.encode("Hello world")
    assert r["count"] == len(r["tokens"]) and r["max_model_len"] == TINY_MAX_MODEL_LEN
    assert r["token_strs"] == tok.convert_ids_to_tokens(r["tokens"])
    r2 = post(http, "/tokenize", {"prompt": "Hello world", "add_special_tokens": False}).json()
    assert r2["tokens"] == tok.encode("Hello world", add_special_tokens=False)
    assert r2.get("token_strs") is None
    d = post(http, "/detokenize", {"tokens": r2["tokens"]}).json()
    assert d == {"prompt": "Hello world"}
    chat = post(http, "/tokenize", {"messages": MESSAGES}).json()
    usage = post(http, "/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 1}).json()
    assert chat["count"] == usage["usage"]["prompt_tokens"]


def test_metrics(http: Any) -> None:
    post(http, "/v1/completions", {"prompt": "metrics please", "max_tokens": 3, "ignore_eos": True})
    text = http.get("/metrics").text
    for name in (
        "fastlm:num_requests_running",
        "fastlm:num_requests_waiting",
        "fastlm:kv_cache_usage_perc",
        "fastlm:prompt_tokens_total",
        "fastlm:generation_tokens_total",
        "fastlm:prefix_cache_queries_total",
        "fastlm:prefix_cache_hits_total",
        "fastlm:time_to_first_token_seconds_bucket",
        "fastlm:inter_token_latency_seconds_bucket",
        "fastlm:e2e_request_latency_seconds_count",
        "fastlm:request_success_total",
    ):
        assert name in text, name
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    key = f'fastlm:e2e_request_latency_seconds_count{{model_name="{MODEL_NAME}"}}'
    assert values[key] >= 1
    assert values[f'fastlm:generation_tokens_total{{model_name="{MODEL_NAME}"}}'] >= 3


# ---- disconnects ----------------------------------------------------------------------------


def test_disconnect_mid_stream_frees_everything(server: Any, tiny_runtime: Any) -> None:
    body = {"prompt": "disconnect", "max_tokens": 100, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=server.url, timeout=30) as c:
        with c.stream("POST", "/v1/completions", json=body) as r:
            it = r.iter_raw()
            assert next(it).startswith(b"data: ")
    s = engine_idle(tiny_runtime)
    assert s.num_running == 0 and s.num_waiting == 0
    assert s.num_free_blocks == s.num_blocks


def test_disconnect_non_streaming_aborts(server: Any, tiny_runtime: Any) -> None:
    import socket

    body = json.dumps({"prompt": "x", "max_tokens": 120, "ignore_eos": True, "n": 8}).encode()
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        time.sleep(0.02)
        sock.close()
    s = engine_idle(tiny_runtime)
    assert s.num_running == 0 and s.num_waiting == 0
    assert s.num_free_blocks == s.num_blocks
    # The server is still healthy.
    with httpx.Client(base_url=server.url) as c:
        assert c.post("/v1/completions", json={"prompt": "x", "max_tokens": 1}).status_code == 200
