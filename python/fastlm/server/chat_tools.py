"""Chat tools and reasoning: request rules (tools, tool_choice, parallel_tool_calls), the grammar
that enforces `required` / named tool choices, and ChoiceOutput, which turns one choice's text
deltas into OpenAI delta messages (reasoning, content, tool-call deltas).

Streaming and non-streaming share ChoiceOutput (non-streaming feeds the whole text at once), so a
streamed message reassembles into exactly the non-streamed one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from fastlm.reasoning import ReasoningParser, ReasoningStream
from fastlm.server.errors import APIError
from fastlm.server.protocol import DeltaMessage
from fastlm.structured_outputs import StructuredOutputsParams
from fastlm.tool_parsers import ToolCall, ToolParser


@dataclass
class ToolConfig:
    """What the server was started with (--enable-auto-tool-choice, --tool-call-parser,
    --reasoning-parser)."""

    enable_auto_tool_choice: bool = False
    tool_parser: type[ToolParser] | None = None
    reasoning_parser: ReasoningParser | None = None


def _function(tool: Any, i: int) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type", "function") != "function":
        raise APIError(f"tools[{i}] must be a function tool", 400, "tools")
    fn = tool.get("function")
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise APIError(f"tools[{i}].function needs a name", 400, "tools")
    params = fn.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(params, dict):
        raise APIError(f"tools[{i}].function.parameters must be a JSON schema", 400, "tools")
    return {"name": fn["name"], "parameters": params}


@dataclass
class ToolPlan:
    """How one chat request uses tools: mode none | auto | required | named."""

    mode: str = "none"
    tools: list[dict[str, Any]] = field(default_factory=list)  # [{name, parameters}]
    named: str | None = None
    parallel: bool = True

    def structured_outputs(self) -> StructuredOutputsParams | None:
        """The grammar of required / named choices: a valid call whose arguments validate."""
        if self.mode == "named":
            params = next(t["parameters"] for t in self.tools if t["name"] == self.named)
            return StructuredOutputsParams(json=params)
        if self.mode != "required":
            return None
        calls = [
            {
                "type": "object",
                "properties": {"name": {"const": t["name"]}, "parameters": t["parameters"]},
                "required": ["name", "parameters"],
                "additionalProperties": False,
            }
            for t in self.tools
        ]
        schema: dict[str, Any] = {"type": "array", "items": {"anyOf": calls}, "minItems": 1}
        if not self.parallel:
            schema["maxItems"] = 1
        return StructuredOutputsParams(json=schema)


def tool_plan(req: Any, config: ToolConfig) -> ToolPlan:
    """vLLM's rules: tools default tool_choice to auto, which needs --enable-auto-tool-choice
    and a --tool-call-parser; a named choice must name one of the tools."""
    tools = [_function(t, i) for i, t in enumerate(req.tools or [])]
    choice = req.tool_choice
    if choice is None:
        choice = "auto" if tools else "none"
    parallel = req.parallel_tool_calls is not False
    if isinstance(choice, dict):
        fn = choice.get("function") if choice.get("type", "function") == "function" else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str):
            raise APIError(
                'tool_choice must be "none", "auto", "required" or {"type": "function", '
                '"function": {"name": ...}}',
                400,
                "tool_choice",
            )
        if name not in {t["name"] for t in tools}:
            raise APIError(
                f"tool_choice names function {name!r}, which is not in tools", 400, "tool_choice"
            )
        return ToolPlan("named", tools, name, parallel)
    if choice not in ("none", "auto", "required"):
        raise APIError(
            f'tool_choice must be "none", "auto", "required" or a named function, got {choice!r}',
            400,
            "tool_choice",
        )
    if choice != "none" and not tools:
        raise APIError(f'tool_choice "{choice}" needs tools', 400, "tool_choice")
    if choice == "auto" and not (config.enable_auto_tool_choice and config.tool_parser):
        raise APIError(
            '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be '
            "set",
            400,
            "tool_choice",
        )
    return ToolPlan(choice, tools, None, parallel)


def history_for_template(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Assistant tool calls with their arguments as objects and a null content as "", as
    templates expect (vLLM; Qwen3's template fails on a missing content)."""
    out = []
    for m in messages:
        calls = m.get("tool_calls") if isinstance(m, dict) else None
        if not calls:
            out.append(m)
            continue
        fixed = []
        for c in calls:
            fn = c.get("function") if isinstance(c, dict) else None
            if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                try:
                    fn = {**fn, "arguments": json.loads(fn["arguments"])}
                except json.JSONDecodeError:
                    pass
                c = {**c, "function": fn}
            fixed.append(c)
        out.append({**m, "content": m.get("content") or "", "tool_calls": fixed})
    return out


def _call_delta(index: int, call: ToolCall) -> list[DeltaMessage]:
    """OpenAI's tool-call deltas: id, type and name once, then the arguments."""
    return [
        DeltaMessage(
            tool_calls=[
                {
                    "index": index,
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": ""},
                }
            ]
        ),
        DeltaMessage(tool_calls=[{"index": index, "function": {"arguments": call.arguments}}]),
    ]


class ChoiceOutput:
    """One choice's text deltas -> delta messages; `called` once tool calls went out."""

    def __init__(
        self,
        plan: ToolPlan,
        config: ToolConfig,
        include_reasoning: bool,
        prompt_block: str | None = None,
    ) -> None:
        """`prompt_block`: whether the prompt opened or closed a think block
        (ThinkTokens.prompt_block)."""
        self.plan = plan
        self.reasoning: ReasoningStream | None = (
            config.reasoning_parser.stream(prompt_block) if config.reasoning_parser else None
        )
        self.include_reasoning = include_reasoning
        self.parser: ToolParser | None = (
            config.tool_parser(plan.tools) if plan.mode == "auto" and config.tool_parser else None
        )
        self.content = ""  # content after reasoning, so far
        self.sent = 0  # content characters already sent
        self.called = False
        self.named_call: ToolCall | None = None
        self.section = -1  # where the parser's tool-call section starts in content
        self.calls: list[ToolCall] = []  # auto-mode calls sent so far (arguments sent so far)

    def feed(self, text: str) -> list[DeltaMessage]:
        out: list[DeltaMessage] = []
        if self.reasoning is not None:
            reasoning, text = self.reasoning.feed(text)
            if reasoning and self.include_reasoning:
                out.append(DeltaMessage(reasoning_content=reasoning))
        return out + self._content(text)

    def finish(self, finish_reason: str | None) -> tuple[list[DeltaMessage], str | None]:
        """The held-back rest; and the finish reason (tool_calls when calls went out)."""
        out: list[DeltaMessage] = []
        if self.reasoning is not None:
            reasoning, text = self.reasoning.finish()
            if reasoning and self.include_reasoning:
                out.append(DeltaMessage(reasoning_content=reasoning))
            out += self._content(text)
        out += self._flush()
        if self.called and self.plan.mode in ("auto", "required") and finish_reason == "stop":
            finish_reason = "tool_calls"
        return out, finish_reason

    def _content(self, text: str) -> list[DeltaMessage]:
        if not text:
            return []
        self.content += text
        mode = self.plan.mode
        if mode == "named":
            out = []
            if self.named_call is None:
                assert self.plan.named is not None
                self.named_call = ToolCall(self.plan.named, "")
                out.append(_call_delta(0, self.named_call)[0])
                self.called = True
            out.append(DeltaMessage(tool_calls=[{"index": 0, "function": {"arguments": text}}]))
            return out
        if mode == "required":
            return []  # the whole array is parsed at the end
        if self.parser is None:
            piece = self.content[self.sent :]
            self.sent = len(self.content)
            return [DeltaMessage(content=piece)]
        if self.parser.incremental:
            return self._auto()
        safe = self.parser.held_from(self.content)
        if safe > self.sent and self.content[:safe].strip():
            piece = self.content[self.sent : safe]
            self.sent = safe
            return [DeltaMessage(content=piece)]
        return []

    def _auto(self) -> list[DeltaMessage]:
        """Auto mode with an incremental parser: content until the tool-call section starts
        (holding back only a possible marker), then the calls' deltas as they become certain."""
        parser = self.parser
        assert parser is not None
        out: list[DeltaMessage] = []
        if self.section < 0:
            safe = parser.held_from(self.content)
            if safe > self.sent and self.content[:safe].strip():
                out.append(DeltaMessage(content=self.content[self.sent : safe]))
                self.sent = safe
            self.section = parser.marker_index(self.content)
            if self.section < 0:
                return out
        found = parser.calls_so_far(self.content[self.section :])
        if found is None:  # certainly not tool calls: the rest is content
            self.parser = None
            return out + [self._rest()] if self.sent < len(self.content) else out
        if not self.plan.parallel:
            found = found[:1]
        for i, call in enumerate(found):
            if i == len(self.calls):
                self.calls.append(ToolCall(call.name, ""))
                out.append(_call_delta(i, self.calls[i])[0])
                self.called = True
            sent = self.calls[i]
            if len(call.arguments) > len(sent.arguments):
                piece = call.arguments[len(sent.arguments) :]
                out.append(
                    DeltaMessage(tool_calls=[{"index": i, "function": {"arguments": piece}}])
                )
                sent.arguments = call.arguments
        return out

    def _rest(self) -> DeltaMessage:
        piece = self.content[self.sent :]
        self.sent = len(self.content)
        return DeltaMessage(content=piece)

    def _flush(self) -> list[DeltaMessage]:
        if self.plan.mode == "named":
            return []
        if self.parser is not None and self.parser.incremental:
            if self.calls or self.sent == len(self.content):
                return []
            return [self._rest()]  # no calls: what was held back is content
        calls: list[ToolCall] = []
        content: str | None = self.content
        if self.plan.mode == "required":
            calls = _required_calls(self.content)
            if calls:
                content = None
        elif self.parser is not None:
            content, calls = self.parser.extract(self.content)
        if calls and not self.plan.parallel:
            calls = calls[:1]
        out: list[DeltaMessage] = []
        rest = (
            (content or "")[self.sent :]
            if (content or "").startswith(self.content[: self.sent])
            else ""
        )
        if rest and (self.sent or rest.strip() or not calls):
            out.append(DeltaMessage(content=rest))
        self.sent = len(self.content)
        for i, call in enumerate(calls):
            out += _call_delta(i, call)
        self.called = self.called or bool(calls)
        return out


def _required_calls(text: str) -> list[ToolCall]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError:
        return []
    if not isinstance(items, list):
        return []
    return [
        ToolCall(c["name"], json.dumps(c.get("parameters", {}), ensure_ascii=False))
        for c in items
        if isinstance(c, dict) and isinstance(c.get("name"), str)
    ]


def assemble(deltas: list[DeltaMessage]) -> tuple[str | None, str | None, list[dict[str, Any]]]:
    """(content, reasoning, tool_calls) of a message from its deltas, as a client would
    reassemble them."""
    content: list[str] = []
    reasoning: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    for d in deltas:
        if isinstance(d.content, str):
            content.append(d.content)
        if isinstance(d.reasoning_content, str):
            reasoning.append(d.reasoning_content)
        if isinstance(d.tool_calls, list):
            for tc in d.tool_calls:
                entry = calls.setdefault(
                    tc["index"],
                    {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
                )
                entry["id"] = tc.get("id", entry["id"])
                fn = tc.get("function", {})
                entry["function"]["name"] += fn.get("name", "")
                entry["function"]["arguments"] += fn.get("arguments", "")
    return (
        "".join(content) if content else None,
        "".join(reasoning) if reasoning else None,
        [calls[i] for i in sorted(calls)],
    )
