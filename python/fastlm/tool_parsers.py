"""Tool-call parsers (vLLM's --tool-call-parser): find the function calls in a model's text.

Each parser knows its model family's format and splits an output into (content, tool calls);
text that does not parse as calls stays content. The built-in parsers are incremental
(`calls_so_far`): given the output so far they return the calls as far as they are certain, and
what they return for a longer text only extends it (same names, longer arguments). Streaming
sends the differences as OpenAI's tool-call deltas (id and name once, then argument fragments),
and the non-streamed message is the same function of the whole text, so the two always agree.
A call counts once its name is complete: an output cut short (max_tokens) inside a call gives
that call with the arguments that arrived, as OpenAI does.

`--tool-parser-plugin FILE` runs FILE, which may add parsers with `@register_tool_parser(name)`;
a plugin parser may implement only `parse` (whole outputs; its calls are sent at the end).
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


@dataclass
class PartialCall:
    """A call as far as it is certain: its name, and a prefix of its arguments' JSON text."""

    name: str
    arguments: str


class ToolParser:
    """Base: `markers` are the strings a tool-call section starts with (anywhere in the text),
    or, with `whole_output`, what the whole output starts with."""

    markers: tuple[str, ...] = ()
    whole_output = False

    def __init__(self, tools: list[dict[str, Any]] | None = None) -> None:
        self.tools = tools or []

    @property
    def incremental(self) -> bool:
        return type(self).calls_so_far is not ToolParser.calls_so_far

    def calls_so_far(self, section: str) -> list[PartialCall] | None:
        """Incremental parsers: the calls in `section` (the text from the first marker on, maybe
        cut short) as far as they are certain; None when the section is certainly not tool
        calls. Monotone: for a longer section the result extends this one."""
        raise NotImplementedError

    def _scanner(self, section: str) -> _Scanner:
        """The scanner of the previous section when `section` extends it (a stream), else a
        new one."""
        sc: _Scanner | None = self.__dict__.get("_scan")
        if sc is None or not section.startswith(sc.text):
            sc = self.__dict__["_scan"] = _Scanner()
        sc.text = section
        return sc

    def parse(self, text: str) -> list[ToolCall] | None:
        """The calls in `text` from its first marker on; None when it holds no valid calls."""
        calls = self.calls_so_far(text)
        return [ToolCall(c.name, c.arguments) for c in calls] if calls else None

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


def _json_object(items: list[tuple[str, Any]], closed: bool) -> str:
    """The JSON text json.dumps gives the object of `items`, without its `}` while not closed,
    so that the text for more items extends the text for fewer."""
    body = ", ".join(
        f"{json.dumps(k, ensure_ascii=False)}: {json.dumps(v, ensure_ascii=False)}"
        for k, v in items
    )
    return "{" + body + ("}" if closed else "")


# --- incremental JSON scanning -------------------------------------------------------------

_WS = " \t\r\n"


class _Invalid(Exception):
    """The text is certainly not what the parser looks for (decided by a prefix: a longer text
    is invalid at the same place)."""


def _skip_ws(s: str, i: int, extra: str = "") -> int:
    while i < len(s) and (s[i] in _WS or s[i] in extra):
        i += 1
    return i


# A quoted string's body (possessive: no backtracking), brackets and a literal's stops.
_BODIES = {
    '"': re.compile(r'(?:[^"\\]++|\\.)*+', re.DOTALL),
    "'": re.compile(r"(?:[^'\\]++|\\.)*+", re.DOTALL),
}
_JSON_BRACKETS = re.compile(r'["{}\[\]]')
_LITERAL_STOPS = re.compile(r"[\"'()\[\]{},]")


class _Scanner:
    """Finds where strings, JSON values and Python literals end, remembering where it stopped
    in those still open at the end of the text: a stream re-parses a growing text at each
    delta, and resuming makes that cost the new part only, not the whole (long arguments)."""

    def __init__(self) -> None:
        self.text = ""
        self.strings: dict[int, int] = {}  # open string's quote -> where its body scan stopped
        self.values: dict[int, tuple[int, int]] = {}  # open bracket -> (scan position, depth)
        self.literals: dict[int, tuple[int, int]] = {}

    def string_end(self, s: str, i: int) -> int | None:
        """s[i] is a quote: the index after the closing quote; None while it is not closed."""
        e = _BODIES[s[i]].match(s, self.strings.get(i, i + 1)).end()  # type: ignore[union-attr]
        if e < len(s) and s[e] == s[i]:
            return e + 1
        self.strings[i] = e  # the end, or a backslash at the end
        return None

    def value_end(self, s: str, i: int) -> int | None:
        """The index after the JSON value starting at s[i]; None while it is incomplete."""
        c = s[i]
        if c == '"':
            return self.string_end(s, i)
        if c in "{[":
            j, depth = self.values.get(i, (i, 0))
            while (m := _JSON_BRACKETS.search(s, j)) is not None:
                j = m.start()
                if s[j] == '"':
                    end = self.string_end(s, j)
                    if end is None:
                        break
                    j = end
                    continue
                depth += 1 if s[j] in "{[" else -1
                if depth == 0:
                    return j + 1
                j += 1
            else:
                j = len(s)
            self.values[i] = (j, depth)
            return None
        j = i
        while j < len(s) and (s[j].isalnum() or s[j] in "+-."):
            j += 1
        if j == i:
            raise _Invalid
        return j if j < len(s) else None  # a number may go on

    def literal_end(self, s: str, i: int) -> int | None:
        """The index of the ',' or ')' that ends the Python literal starting at s[i]; None
        while it is incomplete."""
        j, depth = self.literals.get(i, (i, 0))
        while (m := _LITERAL_STOPS.search(s, j)) is not None:
            j = m.start()
            c = s[j]
            if c in "'\"":
                end = self.string_end(s, j)
                if end is None:
                    break
                j = end
                continue
            if c in "([{":
                depth += 1
            elif c in ")]}" and depth > 0:
                depth -= 1
            elif depth == 0:  # a ',' or ')' of the call
                return j
            j += 1
        else:
            j = len(s)
        self.literals[i] = (j, depth)
        return None


@dataclass
class _ObjectCall:
    name: str | None
    arguments: str
    end: int | None  # after the object (or where it broke off); None while incomplete


def _json_call(sc: _Scanner, s: str, i: int, args_keys: tuple[str, ...]) -> _ObjectCall:
    """Scans the call object {"name": ..., "arguments": {...}} starting at s[i] == '{'. The
    arguments are the model's own text of the object (a prefix while it is incomplete); a
    string holding JSON (some models) counts once complete. Raises _Invalid when the text is
    not a call object and no name was read; after the name, a broken object ends the call."""
    name: str | None = None
    args, have_args = "", False
    j = i + 1
    while True:
        j = _skip_ws(s, j)
        if j >= len(s):
            return _ObjectCall(name, args, None)
        if s[j] == "}":
            return _ObjectCall(name, args if have_args else "{}", j + 1)
        try:
            if s[j] != '"':
                raise _Invalid
            key_end = sc.string_end(s, j)
            if key_end is None:
                return _ObjectCall(name, args, None)
            key = json.loads(s[j:key_end])
            j = _skip_ws(s, key_end)
            if j >= len(s):
                return _ObjectCall(name, args, None)
            if s[j] != ":":
                raise _Invalid
            j = _skip_ws(s, j + 1)
            if j >= len(s):
                return _ObjectCall(name, args, None)
            end = sc.value_end(s, j)
            if key == "name" and name is None:
                if end is None:
                    return _ObjectCall(name, args, None)
                value = json.loads(s[j:end])
                if not isinstance(value, str):
                    raise _Invalid
                name = value
            elif key in args_keys and not have_args:
                if s[j] == "{":
                    args = s[j:] if end is None else s[j:end]
                    have_args = end is not None
                elif end is not None:
                    text = _arguments(json.loads(s[j:end]))
                    if text is None:
                        raise _Invalid
                    args, have_args = text, True
            if end is None:
                return _ObjectCall(name, args, None)
            j = _skip_ws(s, end)
            if j >= len(s):
                return _ObjectCall(name, args, None)
            if s[j] == ",":
                j += 1
            elif s[j] != "}":
                raise _Invalid
        except (_Invalid, ValueError):
            if name is None:
                raise _Invalid from None
            return _ObjectCall(name, args, j)


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

    def calls_so_far(self, section: str) -> list[PartialCall] | None:
        sc = self._scanner(section)
        calls: list[PartialCall] = []
        pos = 0
        while (k := section.find("<tool_call>", pos)) >= 0:
            j = _skip_ws(section, k + len("<tool_call>"))
            if j >= len(section):
                break
            if section[j] != "{":
                pos = j
                continue
            try:
                call = _json_call(sc, section, j, ("arguments", "parameters"))
            except _Invalid:
                pos = j
                continue
            if call.name is not None:
                calls.append(PartialCall(call.name, call.arguments))
            if call.end is None:
                break
            pos = call.end
        return calls


@register_tool_parser("llama3_json")
class Llama3JsonToolParser(ToolParser):
    """Llama 3.x JSON calls: the output is {"name": ..., "parameters": {...}} objects separated
    by ';', optionally after <|python_tag|>."""

    markers = ("<|python_tag|>", "{")
    whole_output = True
    _tag = "<|python_tag|>"

    def calls_so_far(self, section: str) -> list[PartialCall] | None:
        if self._tag.startswith(section):
            return []  # the tag may go on
        sc = self._scanner(section)
        j = len(self._tag) if section.startswith(self._tag) else 0
        calls: list[PartialCall] = []
        while True:
            j = _skip_ws(section, j, ";" if calls else "")
            if j >= len(section):
                return calls
            if section[j] != "{":
                return calls or None
            try:
                call = _json_call(sc, section, j, ("parameters", "arguments"))
            except _Invalid:
                return calls or None
            if call.name is None:  # a JSON object that is not a call
                return calls if call.end is None else calls or None
            calls.append(PartialCall(call.name, call.arguments))
            if call.end is None:
                return calls
            j = call.end


@register_tool_parser("mistral")
class MistralToolParser(ToolParser):
    """Mistral: [TOOL_CALLS] then a JSON list of {"name", "arguments"} (v3), or name{args}
    pairs, each after its own [TOOL_CALLS] (v11+)."""

    markers = ("[TOOL_CALLS]",)
    _name = re.compile(r"[A-Za-z0-9_.\-]+")

    def calls_so_far(self, section: str) -> list[PartialCall] | None:
        sc = self._scanner(section)
        s, pos = section, 0
        calls: list[PartialCall] = []
        while (k := s.find("[TOOL_CALLS]", pos)) >= 0:
            j = _skip_ws(s, k + len("[TOOL_CALLS]"))
            if j >= len(s):
                return calls
            if s[j] == "[":  # v3: a JSON list of call objects
                j += 1
                while True:
                    j = _skip_ws(s, j)
                    if j >= len(s):
                        return calls
                    if s[j] != "{":
                        break
                    try:
                        call = _json_call(sc, s, j, ("arguments", "parameters"))
                    except _Invalid:
                        break
                    if call.name is not None:
                        calls.append(PartialCall(call.name, call.arguments))
                    if call.end is None:
                        return calls
                    j = _skip_ws(s, call.end)
                    if j >= len(s):
                        return calls
                    if s[j] != ",":
                        break
                    j += 1
                pos = j
                continue
            m = self._name.match(s, j)  # v11: name[ARGS]{...} or name{...}
            if m is None:
                pos = j
                continue
            e = _skip_ws(s, m.end())
            if s.startswith("[ARGS]", e):
                e = _skip_ws(s, e + len("[ARGS]"))
            elif "[ARGS]".startswith(s[e:]):
                return calls  # the name or [ARGS] may go on
            if e >= len(s):
                return calls
            if s[e] != "{":
                pos = e
                continue
            end = sc.value_end(s, e)
            calls.append(PartialCall(m[0], s[e:] if end is None else s[e:end]))
            if end is None:
                return calls
            pos = end
        return calls


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


@register_tool_parser("pythonic")
class PythonicToolParser(ToolParser):
    """Llama 3.2 / 4 pythonic calls: the output is [f(a=1), g(b="x")] with literal arguments."""

    markers = ("[",)
    whole_output = True

    def calls_so_far(self, section: str) -> list[PartialCall] | None:
        s, j, sc = section, 1, self._scanner(section)
        calls: list[PartialCall] = []
        while True:
            j = _skip_ws(s, j)
            if j >= len(s):
                return calls
            m = _DOTTED.match(s, j)
            if m is None:
                return calls or None
            e = m.end()
            if e >= len(s) or (s[e] == "." and e + 1 == len(s)):
                return calls  # the name may go on
            if s[e] != "(":
                return calls or None
            items, closed, k = self._keywords(sc, s, e + 1)
            calls.append(PartialCall(m[0], _json_object(items, closed)))
            if not closed:
                return calls
            j = _skip_ws(s, k)
            if j >= len(s) or s[j] != ",":
                return calls
            j += 1

    @staticmethod
    def _keywords(sc: _Scanner, s: str, k: int) -> tuple[list[tuple[str, Any]], bool, int]:
        """The keyword arguments read from s[k:], whether the call closed, and where it
        ended. Stops at the end of the text, or at anything that is not key=literal."""
        items: list[tuple[str, Any]] = []
        while True:
            k = _skip_ws(s, k)
            if k >= len(s):
                return items, False, k
            if s[k] == ")":
                return items, True, k + 1
            m = _IDENT.match(s, k)
            if m is None:
                return items, False, k
            v = _skip_ws(s, m.end())
            if v >= len(s) or s[v] != "=":
                return items, False, v
            end = sc.literal_end(s, v + 1)
            if end is None:
                return items, False, len(s)
            try:
                items.append((m[0], ast.literal_eval(s[v + 1 : end].strip())))
            except (ValueError, SyntaxError):
                return items, False, end
            k = end + 1 if s[end] == "," else end


@register_tool_parser("qwen3_xml")
@register_tool_parser("qwen3_coder")
class Qwen3XmlToolParser(ToolParser):
    """Qwen3-Coder: <tool_call><function=NAME><parameter=P>value</parameter>...</function>
    </tool_call>; values are converted by the tool's parameter schema (text stays a string)."""

    markers = ("<tool_call>", "<function=")

    def _param_types(self, name: str) -> dict[str, Any]:
        for t in self.tools:  # OpenAI's {"type", "function": {...}} or the function itself
            fn = t.get("function", t) if isinstance(t, dict) else {}
            if fn.get("name") == name:
                props = (fn.get("parameters") or {}).get("properties") or {}
                return {k: v.get("type") for k, v in props.items() if isinstance(v, dict)}
        return {}

    def calls_so_far(self, section: str) -> list[PartialCall] | None:
        s, pos = section, 0
        calls: list[PartialCall] = []
        while (k := s.find("<function=", pos)) >= 0:
            e = s.find(">", k)
            if e < 0:
                return calls
            name = s[k + len("<function=") : e]
            if not name or any(c in _WS for c in name):
                pos = k + 1
                continue
            types = self._param_types(name)
            items: list[tuple[str, Any]] = []
            p, closed = e + 1, False
            while True:
                f, q = s.find("</function>", p), s.find("<parameter=", p)
                if q >= 0 and (f < 0 or q < f):
                    key_end = s.find(">", q)
                    value_end = s.find("</parameter>", key_end + 1) if key_end >= 0 else -1
                    if value_end < 0:
                        break
                    key = s[q + len("<parameter=") : key_end]
                    value = s[key_end + 1 : value_end].removeprefix("\n").removesuffix("\n")
                    items.append((key, self._convert(value, types.get(key))))
                    p = value_end + len("</parameter>")
                    continue
                closed = f >= 0
                p = f + len("</function>")
                break
            calls.append(PartialCall(name, _json_object(items, closed)))
            if not closed:
                return calls
            pos = p
        return calls

    @staticmethod
    def _convert(value: str, kind: Any) -> Any:
        if kind in (None, "string"):
            return value
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
