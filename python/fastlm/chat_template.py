"""Render chat templates exactly as transformers' `apply_chat_template(..., tokenize=False)`.

Also: which content shape a template expects (`detect_content_format`, as vLLM decides it) and
the conversion of OpenAI content parts to that shape.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

ContentFormat = Literal["string", "openai"]

# Names a message's reasoning travels under; templates read the first.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
# Appended to the message being continued, so its end can be found in the rendered text.
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "
# OpenAI content part types that carry text, and the key holding it.
_TEXT_PART_KEYS = {
    "text": "text",
    "input_text": "text",
    "output_text": "text",
    "refusal": "refusal",
}


class ChatTemplateError(ValueError):
    """A template or a conversation that cannot be rendered (the user's mistake, a 400).
    `param` names the offending request field where one is to blame ("messages[1].content[0]")."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes HTML characters, which templates do not expect.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _DictFactory:
    """`dict(...)` for templates, without exposing the dict type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _SafeNamespace(jinja2.utils.Namespace):
    """A jinja namespace that refuses underscore names (a path to interpreter internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - jinja's own signature trick
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _SafeNamespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _SafeNamespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"Chat templates cannot set underscore-prefixed namespace attributes ({name!r})"
            )


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks; when
    rendering prompts it just renders its body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return str(caller())


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _DictFactory()
    env.globals["namespace"] = _SafeNamespace
    return env


@lru_cache(maxsize=32)
def compile_template(template: str) -> jinja2.Template:
    try:
        return _environment().from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ChatTemplateError(f"Invalid chat template: {e}") from e


def _plain(value: Any) -> Any:
    """Rebuild template inputs from plain JSON types: templates come from the Hub and run
    sandboxed, so they must not reach methods of rich objects."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return _plain(dump())
    return f"<{type(value).__name__}>"


def _prepare_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    chat: list[dict[str, Any]] = []
    for message in messages:
        if not isinstance(message, Mapping):
            raise ChatTemplateError(f"Chat messages must be dicts, got {message!r}")
        # Keys set to None (OpenAI's content=None, tool_calls=None) read as absent: many templates
        # test for presence and would otherwise print "None".
        msg = {k: _plain(v) for k, v in message.items() if v is not None}
        reasoning = next((msg[k] for k in _REASONING_FIELDS if msg.get(k) is not None), None)
        if reasoning is not None:
            msg = {"thinking": reasoning, **msg, "reasoning_content": reasoning}
        chat.append(msg)
    return chat


def _bool_kwarg(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ChatTemplateError(f"{name} must be a boolean", f"chat_template_kwargs.{name}")
    return value


def effective_add_generation_prompt(
    add_generation_prompt: bool, chat_template_kwargs: Mapping[str, Any] | None
) -> bool:
    """add_generation_prompt after chat_template_kwargs' override (see render_chat)."""
    value = (chat_template_kwargs or {}).get("add_generation_prompt", add_generation_prompt)
    return value if isinstance(value, bool) else add_generation_prompt


def render_chat(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = False,
    continue_final_message: bool | str = False,
    tools: Sequence[Mapping[str, Any]] | None = None,
    documents: Sequence[Mapping[str, Any]] | None = None,
    special_tokens: Mapping[str, str] | None = None,
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> str:
    """The prompt text for `messages`, byte-identical to transformers' apply_chat_template.

    `special_tokens` is the tokenizer's named special tokens (Tokenizer.special_tokens_map);
    `chat_template_kwargs` become template variables and override them.
    `continue_final_message` (True, or the message field to continue) leaves the last message
    open so the model continues it.
    """
    if not messages:
        raise ChatTemplateError("Cannot apply a chat template to an empty conversation")
    kwargs = dict(chat_template_kwargs or {})
    # vLLM passes chat_template_kwargs to apply_chat_template last, so they override these two.
    if "add_generation_prompt" in kwargs:
        add_generation_prompt = _bool_kwarg(
            kwargs.pop("add_generation_prompt"), "add_generation_prompt"
        )
    if "continue_final_message" in kwargs:
        continue_final_message = _bool_kwarg(
            kwargs.pop("continue_final_message"), "continue_final_message"
        )
    for name in ("messages", "tools", "documents"):
        if name in kwargs:
            raise ChatTemplateError(
                f"chat_template_kwargs cannot set {name!r}: it is a request field of its own",
                f"chat_template_kwargs.{name}",
            )
    if continue_final_message and add_generation_prompt:
        raise ChatTemplateError(
            "continue_final_message and add_generation_prompt are not compatible: the first "
            "continues the last message, the second opens a new assistant message"
        )
    if documents is not None and any(not isinstance(d, Mapping) for d in documents):
        raise ChatTemplateError("Documents must be a list of dicts with 'title' and 'text' keys")
    if tools is not None and any(not isinstance(t, Mapping) for t in tools):
        raise ChatTemplateError("Tools must be JSON schema dicts")

    compiled = compile_template(template)
    chat = _prepare_messages(messages)
    variables = _plain({**(special_tokens or {}), **kwargs})

    continued: str | None = None
    if continue_final_message:
        field = continue_final_message if isinstance(continue_final_message, str) else "content"
        final = chat[-1].get(field)
        if final is None:
            raise ChatTemplateError(
                f'continue_final_message is set but the final message has no "{field}" to continue'
            )
        fields = [field]
        if field in _REASONING_FIELDS:
            fields = [f for f in _REASONING_FIELDS if chat[-1].get(f) == final]
        if not any(f in template for f in fields):
            raise ChatTemplateError(
                f'continue_final_message is set to "{field}" but the chat template does not read it'
            )
        if isinstance(final, (list, tuple)):
            for part in reversed(final):
                if isinstance(part, dict) and "text" in part:
                    continued = str(part["text"])
                    part["text"] = continued + _CONTINUE_TAG
                    break
            else:
                raise ChatTemplateError(
                    "continue_final_message is set but the final message has no text to continue"
                )
        else:
            continued = str(final)
            for f in fields:
                chat[-1][f] = chat[-1][f] + _CONTINUE_TAG

    try:
        rendered = compiled.render(
            messages=chat,
            tools=_plain(list(tools)) if tools is not None else None,
            documents=_plain(list(documents)) if documents is not None else None,
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
    except jinja2.exceptions.TemplateError as e:
        raise ChatTemplateError(f"Chat template error: {e}") from e

    if continued is not None:
        tag = _CONTINUE_TAG.strip()
        if continued.strip() not in rendered or tag not in rendered:
            raise ChatTemplateError(
                "continue_final_message is set but the final message does not appear in the "
                "rendered chat: the template drops part of it"
            )
        at = rendered.rindex(tag)
        if rendered[at : at + len(_CONTINUE_TAG)] == _CONTINUE_TAG:
            rendered = rendered[:at]
        else:
            # The template trimmed the message's trailing whitespace; trim ours to match.
            rendered = rendered[:at].rstrip()
    return rendered


# ---- content format detection (vLLM's "auto") ----------------------------------------------


def _is_name(node: jinja2.nodes.Node, names: set[str]) -> bool:
    return isinstance(node, jinja2.nodes.Name) and node.ctx == "load" and node.name in names


def _is_key_access(node: jinja2.nodes.Node, names: set[str], key: str) -> bool:
    if isinstance(node, jinja2.nodes.Getitem):
        arg = node.arg
        return (
            _is_name(node.node, names) and isinstance(arg, jinja2.nodes.Const) and arg.value == key
        )
    if isinstance(node, jinja2.nodes.Getattr):
        return _is_name(node.node, names) and node.attr == key
    return False


def _is_var_or_elems(node: jinja2.nodes.Node, names: set[str], key: str | None = None) -> bool:
    """`x`, `x[key]` / `x.key`, possibly filtered, tested or sliced."""
    if isinstance(node, (jinja2.nodes.Filter, jinja2.nodes.Test)):
        return node.node is not None and _is_var_or_elems(node.node, names, key)
    if isinstance(node, jinja2.nodes.Getitem) and isinstance(node.arg, jinja2.nodes.Slice):
        return _is_var_or_elems(node.node, names, key)
    return _is_key_access(node, names, key) if key is not None else _is_name(node, names)


def _aliases(root: jinja2.nodes.Node, name: str, key: str | None = None) -> set[str]:
    """`name` plus every variable `{% set %}` to it (or to its `key`), transitively."""
    found = {name} if key is None else set()
    sources = {name}
    changed = True
    while changed:
        changed = False
        for node in root.find_all(jinja2.nodes.Assign):
            target = node.target
            if not isinstance(target, jinja2.nodes.Name) or target.name in found:
                continue
            if _is_var_or_elems(node.node, sources, key) or (
                key is not None and _is_var_or_elems(node.node, found)
            ):
                found.add(target.name)
                changed = True
    return found


def _loop_targets(
    root: jinja2.nodes.Node, names: set[str], key: str | None = None
) -> Iterator[str]:
    for node in root.find_all(jinja2.nodes.For):
        if isinstance(node.target, jinja2.nodes.Name) and _is_var_or_elems(node.iter, names, key):
            yield node.target.name


def _reads_content_as_list(root: jinja2.nodes.Node) -> bool:
    message_lists = _aliases(root, "messages")
    message_vars = set(_loop_targets(root, message_lists))
    # `{% set m = messages[0] %}` names a message too.
    for node in root.find_all(jinja2.nodes.Assign):
        value = node.node
        if (
            isinstance(node.target, jinja2.nodes.Name)
            and isinstance(value, jinja2.nodes.Getitem)
            and not isinstance(value.arg, jinja2.nodes.Slice)
            and _is_name(value.node, message_lists)
        ):
            message_vars.add(node.target.name)
    if not message_vars:
        return False
    contents: set[str] = set()
    for var in message_vars:
        contents |= _aliases(root, var, "content")
    # `for part in message['content']`
    if any(True for _ in _loop_targets(root, message_vars, "content")):
        return True
    if contents and any(True for _ in _loop_targets(root, contents)):
        return True
    # `message['content'][0]['text']` / `content[i].text`
    for access in root.find_all((jinja2.nodes.Getitem, jinja2.nodes.Getattr)):
        if isinstance(access, jinja2.nodes.Getattr):
            is_text = access.attr == "text"
        elif isinstance(access, jinja2.nodes.Getitem):
            arg = access.arg
            is_text = isinstance(arg, jinja2.nodes.Const) and arg.value == "text"
        else:
            continue
        inner = access.node
        if not is_text or not isinstance(inner, jinja2.nodes.Getitem):
            continue
        index = inner.arg
        if isinstance(index, jinja2.nodes.Slice) or (
            isinstance(index, jinja2.nodes.Const) and isinstance(index.value, str)
        ):
            continue  # content[1:] or content['key'] is not a part lookup
        if _is_key_access(inner.node, message_vars, "content") or _is_name(inner.node, contents):
            return True
    return False


def detect_content_format(template: str | None, default: ContentFormat = "string") -> ContentFormat:
    """The content shape a template expects, decided from its syntax tree as vLLM does.

    "openai" when it iterates over a message's content parts (or reads content[i]['text']), else
    "string"; `default` when the template cannot be parsed.
    """
    if template is None:
        return default
    try:
        root = _environment().parse(template)
    except jinja2.exceptions.TemplateSyntaxError:
        return default
    try:
        return "openai" if _reads_content_as_list(root) else "string"
    except Exception:  # noqa: BLE001 - a strange AST must not break requests; fall back
        return default


# ---- OpenAI content parts -------------------------------------------------------------------


def _part_text(part: Any, param: str) -> str:
    """The text of one OpenAI content part; a part that is not text (image_url, input_audio,
    ...) is an error: no model served here takes other modalities, and dropping it silently
    would answer a different question."""
    if isinstance(part, str):
        return part
    if not isinstance(part, Mapping):
        raise ChatTemplateError("A content part must be a string or an object", param)
    kind = part.get("type", "text")
    key = _TEXT_PART_KEYS.get(str(kind))
    if key is None:
        raise ChatTemplateError(
            f"Content part type {kind!r} is not supported: this model takes text only", param
        )
    value = part.get(key)
    if not isinstance(value, str):
        raise ChatTemplateError(f"Content part of type {kind!r} needs a string {key!r}", param)
    return value


def content_parts_to_text(parts: Sequence[Mapping[str, Any]], param: str = "content") -> str:
    """Join the text of OpenAI content parts with newlines (as vLLM does for string templates)."""
    return "\n".join(_part_text(p, f"{param}[{j}]") for j, p in enumerate(parts))


def normalize_messages(
    messages: Sequence[Mapping[str, Any]], content_format: ContentFormat
) -> list[dict[str, Any]]:
    """Messages with `content` in the shape the template expects: a string for "string"
    templates, a list of {type: text, text} parts for "openai" ones."""
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        msg = dict(message)
        content = msg.get("content")
        param = f"messages[{i}].content"
        # `"content": null` (an assistant turn that only made tool calls) is empty content,
        # as in vLLM.
        if content is None:
            content = msg["content"] = "" if content_format == "string" else []
        if content_format == "string":
            if isinstance(content, list):
                msg["content"] = content_parts_to_text(content, param)
        else:
            if isinstance(content, str):
                msg["content"] = [{"type": "text", "text": content}]
            elif isinstance(content, list):
                for j, p in enumerate(content):
                    _part_text(p, f"{param}[{j}]")
                msg["content"] = [
                    {"type": "text", "text": p} if isinstance(p, str) else dict(p) for p in content
                ]
        out.append(msg)
    return out
