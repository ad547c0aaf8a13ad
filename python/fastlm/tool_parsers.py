"""Tool-call parsers (vLLM's --tool-call-parser): find the function calls in a model's text.

Each parser knows its model family's format and splits an output into (content, tool calls);
text that does not parse as calls stays content. Streaming uses the same split (see
ToolCallStream), so streamed deltas reassemble into exactly the non-streamed message.
`--tool-parser-plugin FILE` runs FILE, which may add parsers with `@register_tool_parser(name)`.
"""

from __future__ import annotations

import ast
import json
import re
import runpy
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class ToolCall:
    name: str
    arguments: str  # a JSON object's text
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            self.id = f"chatcmpl-tool-{uuid.uuid4().hex[:24]}"


class ToolParser:
    """Base: `markers` are the strings a tool-call section starts with (anywhere in the text),
    or, with `whole_output`, what the whole output starts with."""

    markers: tuple[str, ...] = ()
    whole_output = False

    def __init__(self, tools: list[dict[str, Any]] | None = None) -> None:
        self.tools = tools or []

    def parse(self, text: str) -> list[ToolCall] | None:
        """The calls in `text` from its first marker on; None when it holds no valid calls."""
        raise NotImplementedError

    def marker_index(self, text: str) -> int:
        """Where the tool-call section starts; -1 when none does (yet)."""
        if self.whole_output:
            head = text.lstrip()
            return len(text) - len(head) if head.startswith(self.markers) else -1
        found = [i for i in (text.find(m) for m in self.markers) if i >= 0]
        return min(found) if found else -1

    def extract(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """(content, tool calls) of a whole output."""
        i = self.marker_index(text)
        if i < 0:
            return text or None, []
        calls = self.parse(text[i:])
        if not calls:
            return text or None, []
        content = text[:i]
        return (content if content.strip() else None), calls

    def held_from(self, text: str) -> int:
        """Streaming: text from this index on may belong to a tool call and is held back."""
        i = self.marker_index(text)
        if i >= 0:
            return i
        if self.whole_output:
            head = text.lstrip()
            if not head or any(m.startswith(head) for m in self.markers):
                return 0
            return len(text)
        for n in range(min(len(text), max(len(m) for m in self.markers)), 0, -1):
            if any(m.startswith(text[-n:]) for m in self.markers):
                return len(text) - n
        return len(text)


def _arguments(value: Any) -> str | None:
    if isinstance(value, str):  # some models emit the arguments as a JSON string
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if not isinstance(value, dict):
        return None
    return json.dumps(value, ensure_ascii=False)


def _call_from_obj(obj: Any, args_keys: tuple[str, ...] = ("arguments", "parameters")) -> ToolCall:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise ValueError("a tool call needs a name")
    raw: Any = next((obj[k] for k in args_keys if k in obj), {})
    args = _arguments(raw)
    if args is None:
        raise ValueError("tool call arguments must be a JSON object")
    return ToolCall(obj["name"], args)


_PARSERS: dict[str, type[ToolParser]] = {}


def register_tool_parser(name: str) -> Callable[[type[ToolParser]], type[ToolParser]]:
    def add(cls: type[ToolParser]) -> type[ToolParser]:
        _PARSERS[name] = cls
        return cls

    return add


def tool_parser_names() -> list[str]:
    return sorted(_PARSERS)


def get_tool_parser(name: str) -> type[ToolParser]:
    try:
        return _PARSERS[name]
    except KeyError:
        raise ValueError(
            f"unknown tool call parser {name!r} (one of {', '.join(tool_parser_names())})"
        ) from None


def load_tool_parser_plugin(path: str) -> None:
    """Runs a plugin file, which registers its parsers with @register_tool_parser."""
    runpy.run_path(path)


@register_tool_parser("hermes")
class HermesToolParser(ToolParser):
    """Hermes / Qwen2.5: <tool_call>{"name": ..., "arguments": {...}}</tool_call>, repeated."""

    markers = ("<tool_call>",)
    _call = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)

    def parse(self, text: str) -> list[ToolCall] | None:
        try:
            return [_call_from_obj(json.loads(m)) for m in self._call.findall(text)] or None
        except ValueError:
            return None


@register_tool_parser("llama3_json")
class Llama3JsonToolParser(ToolParser):
    """Llama 3.x JSON calls: the output is {"name": ..., "parameters": {...}} objects separated
    by ';', optionally after <|python_tag|>."""

    markers = ("<|python_tag|>", "{")
    whole_output = True

    def parse(self, text: str) -> list[ToolCall] | None:
        text = text.strip().removeprefix("<|python_tag|>").strip()
        decoder = json.JSONDecoder()
        calls, i = [], 0
        try:
            while i < len(text):
                obj, end = decoder.raw_decode(text, i)
                calls.append(_call_from_obj(obj))
                i = end
                while i < len(text) and text[i] in " \n\t;":
                    i += 1
        except ValueError:
            return None
        return calls or None


@register_tool_parser("mistral")
class MistralToolParser(ToolParser):
    """Mistral: [TOOL_CALLS] then a JSON list of {"name", "arguments"} (v3), or name{args}
    pairs, each after its own [TOOL_CALLS] (v11+)."""

    markers = ("[TOOL_CALLS]",)

    def parse(self, text: str) -> list[ToolCall] | None:
        parts = [p.strip() for p in text.split("[TOOL_CALLS]") if p.strip()]
        calls: list[ToolCall] = []
        try:
            for part in parts:
                if part.startswith("["):
                    items = json.loads(part)
                    if not isinstance(items, list):
                        return None
                    calls.extend(_call_from_obj(o) for o in items)
                else:
                    m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(?:\[ARGS\])?\s*(\{.*\})", part, re.S)
                    if m is None:
                        return None
                    calls.append(_call_from_obj({"name": m[1], "arguments": json.loads(m[2])}))
        except ValueError:
            return None
        return calls or None


@register_tool_parser("pythonic")
class PythonicToolParser(ToolParser):
    """Llama 3.2 / 4 pythonic calls: the output is [f(a=1), g(b="x")] with literal arguments."""

    markers = ("[",)
    whole_output = True

    def parse(self, text: str) -> list[ToolCall] | None:
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError:
            return None
        if not isinstance(tree.body, ast.List) or not tree.body.elts:
            return None
        calls = []
        for node in tree.body.elts:
            if not isinstance(node, ast.Call) or node.args:
                return None
            name = ast.unparse(node.func)
            try:
                args = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}
            except ValueError:
                return None
            calls.append(ToolCall(name, json.dumps(args, ensure_ascii=False)))
        return calls


@register_tool_parser("qwen3_xml")
@register_tool_parser("qwen3_coder")
class Qwen3XmlToolParser(ToolParser):
    """Qwen3-Coder: <tool_call><function=NAME><parameter=P>value</parameter>...</function>
    </tool_call>; values are converted by the tool's parameter schema (text stays a string)."""

    markers = ("<tool_call>", "<function=")
    _function = re.compile(r"<function=([^>\s]+)>(.*?)</function>", re.DOTALL)
    _parameter = re.compile(r"<parameter=([^>\s]+)>\n?(.*?)\n?</parameter>", re.DOTALL)

    def _param_types(self, name: str) -> dict[str, Any]:
        for t in self.tools:  # OpenAI's {"type", "function": {...}} or the function itself
            fn = t.get("function", t) if isinstance(t, dict) else {}
            if fn.get("name") == name:
                props = (fn.get("parameters") or {}).get("properties") or {}
                return {k: v.get("type") for k, v in props.items() if isinstance(v, dict)}
        return {}

    def parse(self, text: str) -> list[ToolCall] | None:
        calls = []
        for name, body in self._function.findall(text):
            types = self._param_types(name)
            args: dict[str, Any] = {}
            for key, value in self._parameter.findall(body):
                if types.get(key) in (None, "string"):
                    args[key] = value
                    continue
                try:
                    args[key] = json.loads(value)
                except json.JSONDecodeError:
                    args[key] = value
            calls.append(ToolCall(name, json.dumps(args, ensure_ascii=False)))
        return calls or None
