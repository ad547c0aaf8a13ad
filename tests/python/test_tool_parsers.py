"""Tool-call and reasoning parsers against their model families' canonical outputs (and malformed
ones), and streamed in random chunkings == non-streamed."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from fastlm.reasoning import get_reasoning_parser
from fastlm.server.chat_tools import ChoiceOutput, ToolConfig, ToolPlan, assemble
from fastlm.tool_parsers import get_tool_parser, register_tool_parser, tool_parser_names

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            },
        },
    },
    {"type": "function", "function": {"name": "ping", "parameters": {"type": "object"}}},
]
PLAN_TOOLS = [
    {"name": t["function"]["name"], "parameters": t["function"]["parameters"]} for t in TOOLS
]

# parser -> [(model output, expected content, expected [(name, arguments)])]: arguments as a
# dict when they are complete JSON, as the raw text when the output was cut inside a call (a
# call counts once its name is complete; its arguments are what arrived, as OpenAI does).
Calls = list[tuple[str, dict[str, Any] | str]]
CASES: dict[str, list[tuple[str, str | None, Calls]]] = {
    "hermes": [
        (
            'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", '
            '"days": 2}}\n</tool_call>\n<tool_call>\n{"name": "ping", "arguments": {}}\n'
            "</tool_call>",
            "Let me check.\n",
            [("get_weather", {"city": "Paris", "days": 2}), ("ping", {})],
        ),
        ("No tools needed.", "No tools needed.", []),
        ("a < b, and <tool_ is not a tag", "a < b, and <tool_ is not a tag", []),
        (
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": ',
            None,
            [("get_weather", '{"city": ')],
        ),  # cut short
        ('<tool_call>\n{"name": "get_we', None, []),  # cut inside the name
        ('<tool_call>{"arguments": {}}</tool_call>', None, []),  # no name
        (
            '<tool_call>{"arguments": {"city": "Nice"}, "name": "get_weather"}</tool_call>',
            None,
            [("get_weather", {"city": "Nice"})],
        ),  # name after the arguments: sent once the object is complete
        (
            '<tool_call>{"name": "ping", "arguments": "{\\"x\\": 1}"}</tool_call>',
            None,
            [("ping", {"x": 1})],
        ),  # arguments as a JSON string
    ],
    "llama3_json": [
        (
            '{"name": "get_weather", "parameters": {"city": "Oslo"}}; {"name": "ping", '
            '"parameters": {}}',
            None,
            [("get_weather", {"city": "Oslo"}), ("ping", {})],
        ),
        (
            '<|python_tag|>{"name": "ping", "parameters": {}}',
            None,
            [("ping", {})],
        ),
        ("The weather is fine.", "The weather is fine.", []),
        ('{"answer": 42, "unit": "km"}', '{"answer": 42, "unit": "km"}', []),  # JSON, not a call
        ('{"name": "ping", "parameters": {', None, [("ping", "{")]),
    ],
    "mistral": [
        (
            '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Rome"}}]',
            None,
            [("get_weather", {"city": "Rome"})],
        ),
        (
            'Sure.[TOOL_CALLS]get_weather{"city": "Rome", "days": 1}[TOOL_CALLS]ping{}',
            "Sure.",
            [("get_weather", {"city": "Rome", "days": 1}), ("ping", {})],
        ),
        (
            '[TOOL_CALLS]get_weather[ARGS]{"city": "Bari"}',
            None,
            [("get_weather", {"city": "Bari"})],
        ),
        ("Plain answer.", "Plain answer.", []),
        ("[TOOL_CALLS][{'name': broken", None, []),
        ('[TOOL_CALLS]get_weather{"city": "Ro', None, [("get_weather", '{"city": "Ro')]),
    ],
    "pythonic": [
        (
            '[get_weather(city="Lima", days=3), ping()]',
            None,
            [("get_weather", {"city": "Lima", "days": 3}), ("ping", {})],
        ),
        ("[1, 2, 3]", "[1, 2, 3]", []),
        ("[see the docs](http://x)", "[see the docs](http://x)", []),
        ("Hello there", "Hello there", []),
        ('[get_weather(city="Lima", days=', None, [("get_weather", '{"city": "Lima"')]),
    ],
    "qwen3_xml": [
        (
            "I'll look.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nSan Jose\n"
            "</parameter>\n<parameter=days>\n4\n</parameter>\n</function>\n</tool_call>",
            "I'll look.\n",
            [("get_weather", {"city": "San Jose", "days": 4})],
        ),
        ("no calls", "no calls", []),
        (
            "<tool_call>\n<function=get_weather>\n<parameter=city>\nSan Jose\n</parameter>\n"
            "<parameter=days>\n",
            None,
            [("get_weather", '{"city": "San Jose"')],
        ),
        ("<tool_call>\n<function=get_wea", None, []),
    ],
}
CASES["qwen3_coder"] = CASES["qwen3_xml"]


def _calls(calls: list[Any]) -> Calls:
    """(name, arguments) pairs, the arguments as a dict where they are complete JSON."""
    out: Calls = []
    for name, args in calls:
        try:
            out.append((name, json.loads(args)))
        except json.JSONDecodeError:
            out.append((name, args))
    return out


def _non_streamed(parser: str, text: str) -> tuple[str | None, Calls]:
    content, calls = get_tool_parser(parser)(TOOLS).extract(text)
    return content, _calls([(c.name, c.arguments) for c in calls])


@pytest.mark.parametrize("parser", sorted(CASES))
def test_parser_canonical_and_malformed_outputs(parser: str) -> None:
    for text, content, calls in CASES[parser]:
        got_content, got_calls = _non_streamed(parser, text)
        assert got_calls == calls, text
        if calls:
            assert got_content == content, text
        else:  # malformed or no calls: the text stays content, untouched
            assert got_content == text, text


@pytest.mark.parametrize("parser", sorted(CASES))
def test_calls_so_far_only_grow(parser: str) -> None:
    """What a parser says about a prefix is never taken back by a longer text: same names,
    arguments extended, no fewer calls (what streaming sends is final)."""
    p = get_tool_parser(parser)(TOOLS)
    for text, _, _ in CASES[parser]:
        i = p.marker_index(text)
        if i < 0:
            continue
        before: list[Any] = []
        for end in range(i + 1, len(text) + 1):
            now = p.calls_so_far(text[i:end])
            if now is None:  # certainly not calls: stays so
                assert all(p.calls_so_far(text[i:e]) is None for e in range(end, len(text) + 1))
                break
            assert len(now) >= len(before), text[i:end]
            for old, new in zip(before, now, strict=False):
                assert new.name == old.name and new.arguments.startswith(old.arguments)
            before = now


def _shape(plan: ToolPlan, config: ToolConfig, pieces: list[str]) -> tuple[Any, str | None]:
    out = ChoiceOutput(plan, config, include_reasoning=True)
    msgs = []
    for p in pieces:
        msgs += out.feed(p)
    rest, finish = out.finish("stop")
    content, reasoning, calls = assemble(msgs + rest)
    for c in calls:
        c.pop("id")
    return (content, reasoning, calls), finish


def _chunkings(text: str, rng: random.Random) -> list[list[str]]:
    out = []
    for _ in range(20):
        pieces, i = [], 0
        while i < len(text):
            j = i + rng.randint(1, 6)
            pieces.append(text[i:j])
            i = j
        out.append(pieces)
    return out


@pytest.mark.parametrize("parser", sorted(CASES))
def test_streamed_equals_non_streamed(parser: str) -> None:
    rng = random.Random(0)
    config = ToolConfig(True, get_tool_parser(parser), get_reasoning_parser("qwen3"))
    plan = ToolPlan("auto", PLAN_TOOLS)
    for text, _, calls in CASES[parser]:
        for body in (text, f"<think>plan it</think>\n\n{text}"):
            whole, finish = _shape(plan, config, [body])
            assert (finish == "tool_calls") == bool(calls)
            assert (
                _calls([(c["function"]["name"], c["function"]["arguments"]) for c in whole[2]])
                == calls
            )
            for pieces in _chunkings(body, rng):
                assert _shape(plan, config, pieces) == (whole, finish), pieces


def test_required_and_named_shapes() -> None:
    config = ToolConfig()
    required = ToolPlan("required", PLAN_TOOLS)
    text = (
        '[{"name": "ping", "parameters": {}}, {"name": "get_weather", "parameters": {"city": "X"}}]'
    )
    (content, _, calls), finish = _shape(required, config, [text])
    assert content is None and finish == "tool_calls"
    assert [c["function"]["name"] for c in calls] == ["ping", "get_weather"]
    single = ToolPlan("required", PLAN_TOOLS, parallel=False)
    assert len(_shape(single, config, [text])[0][2]) == 1
    # parallel_tool_calls=false in auto mode: the first call only, streamed or not.
    hermes = ToolConfig(True, get_tool_parser("hermes"))
    one = ToolPlan("auto", PLAN_TOOLS, parallel=False)
    two_calls = CASES["hermes"][0][0]
    for pieces in ([two_calls], list(two_calls)):
        (_, _, calls), finish = _shape(one, hermes, pieces)
        assert [c["function"]["name"] for c in calls] == ["get_weather"] and finish == "tool_calls"
    named = ToolPlan("named", PLAN_TOOLS, named="get_weather")
    (content, _, calls), finish = _shape(named, config, ['{"city":', ' "Bo"}'])
    assert content is None and finish == "stop"  # as OpenAI and vLLM for a forced function
    assert calls == [
        {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Bo"}'}}
    ]


def test_reasoning_parsers_split() -> None:
    r1, qwen3 = get_reasoning_parser("deepseek_r1"), get_reasoning_parser("qwen3")
    assert r1.split("weigh options</think>\n\nAnswer: 4") == ("weigh options", "Answer: 4")
    assert r1.split("<think>still thinking") == ("still thinking", None)
    assert qwen3.split("<think>hmm</think>\n\nYes.") == ("hmm", "Yes.")
    assert qwen3.split("Yes.") == (None, "Yes.")  # enable_thinking=False: no think block
    with pytest.raises(ValueError, match="unknown reasoning parser"):
        get_reasoning_parser("nope")


def test_plugin_registers_parser(tmp_path: Any) -> None:
    from fastlm.tool_parsers import ToolCall, ToolParser, load_tool_parser_plugin

    plugin = tmp_path / "plugin.py"
    plugin.write_text(
        "from fastlm.tool_parsers import ToolCall, ToolParser, register_tool_parser\n"
        "@register_tool_parser('shout')\n"
        "class Shout(ToolParser):\n"
        "    markers = ('CALL ',)\n"
        "    def parse(self, text):\n"
        "        return [ToolCall(text.split()[1], '{}')]\n"
    )
    load_tool_parser_plugin(str(plugin))
    assert "shout" in tool_parser_names()
    content, calls = get_tool_parser("shout")().extract("ok CALL ping")
    assert content == "ok " and calls[0].name == "ping"
    # A parser with only `parse` (not incremental) streams its calls when the output ends.
    shout = ToolConfig(True, get_tool_parser("shout"))
    for pieces in (["ok CALL ping"], list("ok CALL ping")):
        (content, _, calls), finish = _shape(ToolPlan("auto", PLAN_TOOLS), shout, pieces)
        assert (content, [c["function"]["name"] for c in calls], finish) == (
            "ok ",
            ["ping"],
            "tool_calls",
        )
    assert register_tool_parser and ToolCall and ToolParser
    with pytest.raises(ValueError, match="unknown tool call parser"):
        get_tool_parser("nope")


@pytest.mark.parametrize("parser", sorted(CASES))
def test_calls_stream_as_they_arrive(parser: str) -> None:
    """Fed one character at a time, a canonical output's content and calls all go out before
    the output ends (nothing waits for finish), the arguments in several fragments."""
    text, content, calls = CASES[parser][0]
    out = ChoiceOutput(
        ToolPlan("auto", PLAN_TOOLS), ToolConfig(True, get_tool_parser(parser)), True
    )
    msgs = [m for ch in text for m in out.feed(ch)]
    got_content, _, got_calls = assemble(msgs)
    assert got_content == content
    assert _calls([(c["function"]["name"], c["function"]["arguments"]) for c in got_calls]) == calls
    fragments = [m for m in msgs if m.tool_calls and "id" not in m.tool_calls[0]]
    assert sum(1 for m in fragments if m.tool_calls[0]["index"] == 0) > 1
    rest, finish = out.finish("stop")
    assert finish == "tool_calls" and not rest
