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

# parser -> [(model output, expected content, expected [(name, arguments)])]
CASES: dict[str, list[tuple[str, str | None, list[tuple[str, dict[str, Any]]]]]] = {
    "hermes": [
        (
            'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", '
            '"days": 2}}\n</tool_call>\n<tool_call>\n{"name": "ping", "arguments": {}}\n'
            "</tool_call>",
            "Let me check.\n",
            [("get_weather", {"city": "Paris", "days": 2}), ("ping", {})],
        ),
        ("No tools needed.", "No tools needed.", []),
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": ', None, []),  # partial
        ('<tool_call>{"arguments": {}}</tool_call>', None, []),  # no name
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
        ('{"name": "ping", "parameters": {', None, []),
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
        ("Plain answer.", "Plain answer.", []),
        ("[TOOL_CALLS][{'name': broken", None, []),
    ],
    "pythonic": [
        (
            '[get_weather(city="Lima", days=3), ping()]',
            None,
            [("get_weather", {"city": "Lima", "days": 3}), ("ping", {})],
        ),
        ("[1, 2, 3]", "[1, 2, 3]", []),
        ("Hello there", "Hello there", []),
        ('[get_weather(city="Li', None, []),
    ],
    "qwen3_xml": [
        (
            "I'll look.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nSan Jose\n"
            "</parameter>\n<parameter=days>\n4\n</parameter>\n</function>\n</tool_call>",
            "I'll look.\n",
            [("get_weather", {"city": "San Jose", "days": 4})],
        ),
        ("no calls", "no calls", []),
        ("<tool_call>\n<function=get_weather>\n<parameter=city>\nSan", None, []),
    ],
}
CASES["qwen3_coder"] = CASES["qwen3_xml"]


def _non_streamed(parser: str, text: str) -> tuple[str | None, list[tuple[str, dict[str, Any]]]]:
    content, calls = get_tool_parser(parser)(TOOLS).extract(text)
    return content, [(c.name, json.loads(c.arguments)) for c in calls]


@pytest.mark.parametrize("parser", sorted(CASES))
def test_parser_canonical_and_malformed_outputs(parser: str) -> None:
    for text, content, calls in CASES[parser]:
        got_content, got_calls = _non_streamed(parser, text)
        assert got_calls == calls, text
        if calls:
            assert got_content == content, text
        else:  # malformed or no calls: the text stays content, untouched
            assert got_content == text, text


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
            assert [
                (c["function"]["name"], json.loads(c["function"]["arguments"])) for c in whole[2]
            ] == calls
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
    assert register_tool_parser and ToolCall and ToolParser
    with pytest.raises(ValueError, match="unknown tool call parser"):
        get_tool_parser("nope")
