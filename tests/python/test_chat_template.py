"""fastlm.chat_template.render_chat must be byte-identical to transformers' apply_chat_template."""

from __future__ import annotations

import copy
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastlm.chat_template import (
    ChatTemplateError,
    content_parts_to_text,
    detect_content_format,
    normalize_messages,
    render_chat,
)
from fastlm.tokenizer import Tokenizer

LLAMA31_TEMPLATE = (Path(__file__).parent / "data" / "llama31_chat_template.jinja").read_text()

# Mistral-7B-Instruct-v0.1's tokenizer_config.json template.
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
    "{% endfor %}"
)

# A template reading OpenAI content parts, like multimodal models' templates.
OPENAI_PARTS_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}"
    "{{ part['text'] }}{% endif %}{% endfor %}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

DOCUMENTS_TEMPLATE = (
    "{% if documents %}{% for doc in documents %}"
    "[{{ loop.index }}] {{ doc.title }}: {{ doc.text }}\n"
    "{% endfor %}{% endif %}{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)

TOJSON_TEMPLATE = (
    "{{ tools | tojson }}|{{ tools | tojson(indent=2) }}|{{ tools | tojson(sort_keys=true) }}|"
    "{{ tools | tojson(separators=(',', ':')) }}|{{ tools | tojson(ensure_ascii=true) }}|"
    "{% for m in messages %}{{ m.content }}{% endfor %}"
)

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city — ünïcode & <html>",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}

CHATS: dict[str, list[dict[str, Any]]] = {
    "user_only": [{"role": "user", "content": "Hello! 你好 🤗"}],
    "system": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "  And 3+3?  "},
    ],
    "assistant_last": [
        {"role": "user", "content": "Write a haiku"},
        {"role": "assistant", "content": "Autumn moonlight -\na worm digs silently"},
    ],
}

TOOL_CHAT: list[dict[str, Any]] = [
    {"role": "system", "content": "Use tools when useful."},
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "arguments": {"city": "Paris", "unit": "celsius"},
                },
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'},
]


def _hf(
    ref: Any, messages: list[dict[str, Any]], template: str | None = None, **kwargs: Any
) -> str:
    return ref.apply_chat_template(
        copy.deepcopy(messages), chat_template=template, tokenize=False, **kwargs
    )


def _ours(
    tok: Tokenizer,
    messages: list[dict[str, Any]],
    template: str | None = None,
    *,
    add_generation_prompt: bool = False,
    continue_final_message: bool = False,
    tools: list[dict[str, Any]] | None = None,
    documents: list[dict[str, Any]] | None = None,
    **kwargs: Any,
) -> str:
    original = copy.deepcopy(messages)
    out = render_chat(
        template or tok.get_chat_template(has_tools=tools is not None),
        messages,
        add_generation_prompt=add_generation_prompt,
        continue_final_message=continue_final_message,
        tools=tools,
        documents=documents,
        special_tokens=tok.special_tokens_map,
        chat_template_kwargs=kwargs or None,
    )
    assert messages == original, "render_chat must not modify the caller's messages"
    return out


# SmolLM2's reference tokenizer is transformers reading the 98 MB GGUF: slow to build.
MODELS = [pytest.param("smollm", marks=[pytest.mark.slow, pytest.mark.model]), "qwen3", "llama3"]


@pytest.mark.parametrize("chat", sorted(CHATS))
@pytest.mark.parametrize("gen", [False, True])
@pytest.mark.parametrize("model", MODELS)
def test_builtin_templates_match(
    request: pytest.FixtureRequest, model: str, chat: str, gen: bool
) -> None:
    tok, ref = request.getfixturevalue(f"fl_{model}"), request.getfixturevalue(f"hf_{model}")
    messages = CHATS[chat]
    assert _ours(tok, messages, add_generation_prompt=gen) == _hf(
        ref, messages, add_generation_prompt=gen
    )


@pytest.mark.parametrize("model", MODELS)
def test_continue_final_message_matches(request: pytest.FixtureRequest, model: str) -> None:
    tok, ref = request.getfixturevalue(f"fl_{model}"), request.getfixturevalue(f"hf_{model}")
    messages = CHATS["assistant_last"]
    ours = _ours(tok, messages, continue_final_message=True)
    assert ours == _hf(ref, messages, continue_final_message=True)
    assert ours.endswith("a worm digs silently")
    # A trailing space the template trims (llama3's `| trim`) is trimmed in the output too.
    spaced = [*messages[:-1], {"role": "assistant", "content": "Starts with "}]
    assert _ours(tok, spaced, continue_final_message=True) == _hf(
        ref, spaced, continue_final_message=True
    )


@pytest.mark.parametrize("thinking", [True, False, None])
def test_qwen3_enable_thinking_and_tools(
    fl_qwen3: Tokenizer, hf_qwen3: Any, thinking: bool | None
) -> None:
    kwargs = {} if thinking is None else {"enable_thinking": thinking}
    messages = [
        *TOOL_CHAT,
        {"role": "assistant", "content": "It is 21°C.", "reasoning_content": "The tool said 21."},
        {"role": "user", "content": "Thanks"},
    ]
    for tools in (None, [WEATHER_TOOL]):
        ours = _ours(fl_qwen3, messages, add_generation_prompt=True, tools=tools, **kwargs)
        assert ours == _hf(hf_qwen3, messages, add_generation_prompt=True, tools=tools, **kwargs)
    plain = _ours(fl_qwen3, CHATS["user_only"], add_generation_prompt=True, **kwargs)
    assert plain.endswith("<think>\n\n</think>\n\n") == (thinking is False)


@pytest.mark.parametrize("tools_in_user_message", [True, False])
def test_llama31_tools_match(
    fl_llama3: Tokenizer, hf_llama3: Any, tools_in_user_message: bool
) -> None:
    kwargs = {"tools_in_user_message": tools_in_user_message, "date_string": "01 Jan 2025"}
    for messages in (TOOL_CHAT, TOOL_CHAT[1:], CHATS["system"]):
        ours = _ours(
            fl_llama3,
            messages,
            LLAMA31_TEMPLATE,
            add_generation_prompt=True,
            tools=[WEATHER_TOOL],
            **kwargs,
        )
        ref = _hf(
            hf_llama3,
            messages,
            LLAMA31_TEMPLATE,
            add_generation_prompt=True,
            tools=[WEATHER_TOOL],
            **kwargs,
        )
        assert ours == ref
    assert "Environment: ipython" in ours
    no_tools = _ours(fl_llama3, CHATS["system"], LLAMA31_TEMPLATE, add_generation_prompt=True)
    assert no_tools == _hf(hf_llama3, CHATS["system"], LLAMA31_TEMPLATE, add_generation_prompt=True)


def test_openai_tool_history_renders_like_transformers(
    fl_qwen3: Tokenizer, hf_qwen3: Any, fl_llama3: Tokenizer, hf_llama3: Any
) -> None:
    """A history as OpenAI clients send it (assistant tool_calls with content null and the
    arguments as a JSON string, tool messages with tool_call_id), as the server prepares it,
    renders as transformers renders the same history with the arguments as an object."""
    import json

    from fastlm.server.chat_tools import history_for_template

    call = TOOL_CHAT[2]["tool_calls"][0]
    openai_call = {**call, "function": {**call["function"]}}
    openai_call["function"]["arguments"] = json.dumps(call["function"]["arguments"])
    openai = [*TOOL_CHAT[:2], {"role": "assistant", "content": None, "tool_calls": [openai_call]}]
    openai.append(TOOL_CHAT[3])
    hf = TOOL_CHAT  # content "": transformers' Qwen3 template fails on a null content
    for tok, ref, template in (
        (fl_qwen3, hf_qwen3, None),
        (fl_llama3, hf_llama3, LLAMA31_TEMPLATE),
    ):
        ours = _ours(
            tok,
            history_for_template(openai),
            template,
            add_generation_prompt=True,
            tools=[WEATHER_TOOL],
        )
        assert ours == _hf(ref, hf, template, add_generation_prompt=True, tools=[WEATHER_TOOL])
        assert '"celsius"' in ours and "temperature" in ours, ours


def test_mistral_template(fl_llama3: Tokenizer, hf_llama3: Any) -> None:
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Tell me a joke"},
    ]
    assert _ours(fl_llama3, messages, MISTRAL_TEMPLATE) == _hf(
        hf_llama3, messages, MISTRAL_TEMPLATE
    )
    assert _ours(fl_llama3, messages, MISTRAL_TEMPLATE).startswith(
        "<|begin_of_text|>[INST] Hi [/INST]Hello!"
    )
    # The template's raise_exception surfaces as ChatTemplateError (transformers: TemplateError).
    with pytest.raises(ChatTemplateError, match="alternate"):
        _ours(fl_llama3, CHATS["system"], MISTRAL_TEMPLATE)
    with pytest.raises(Exception, match="alternate"):
        _hf(hf_llama3, CHATS["system"], MISTRAL_TEMPLATE)


def test_documents_and_tojson_and_strftime(fl_smollm: Tokenizer, hf_smollm: Any) -> None:
    docs = [{"title": "Doc A", "text": "alpha"}, {"title": "Dóc B", "text": "beta"}]
    messages = CHATS["system"]
    assert _ours(
        fl_smollm, messages, DOCUMENTS_TEMPLATE, documents=docs, add_generation_prompt=True
    ) == _hf(hf_smollm, messages, DOCUMENTS_TEMPLATE, documents=docs, add_generation_prompt=True)
    tools = [WEATHER_TOOL, {"b": 1, "a": "é"}]
    assert _ours(fl_smollm, messages, TOJSON_TEMPLATE, tools=tools) == _hf(
        hf_smollm, messages, TOJSON_TEMPLATE, tools=tools
    )
    year = _ours(fl_smollm, messages, "{{ strftime_now('%Y') }}")
    assert year == str(datetime.now().year)
    ns = (
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
        "{% endfor %}{{ ns.n }}"
    )
    assert _ours(fl_smollm, messages, ns) == "4"


def test_openai_content_parts(fl_smollm: Tokenizer, hf_smollm: Any) -> None:
    parts = [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]
    messages = [
        {"role": "user", "content": parts},
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
    ]
    assert detect_content_format(OPENAI_PARTS_TEMPLATE) == "openai"
    ours = _ours(fl_smollm, messages, OPENAI_PARTS_TEMPLATE, add_generation_prompt=True)
    assert ours == _hf(hf_smollm, messages, OPENAI_PARTS_TEMPLATE, add_generation_prompt=True)
    # Continuing the final message works on the last text part, as in transformers.
    assert _ours(fl_smollm, messages, OPENAI_PARTS_TEMPLATE, continue_final_message=True) == _hf(
        hf_smollm, messages, OPENAI_PARTS_TEMPLATE, continue_final_message=True
    )
    # For a string template, parts are joined with newlines.
    template = fl_smollm.chat_template
    assert template is not None and detect_content_format(template) == "string"
    as_strings = normalize_messages(messages, "string")
    assert as_strings[0]["content"] == "first\nsecond"
    assert _ours(fl_smollm, as_strings) == _hf(hf_smollm, as_strings)
    assert normalize_messages([{"role": "user", "content": "x"}], "openai")[0]["content"] == [
        {"type": "text", "text": "x"}
    ]
    assert (
        content_parts_to_text([{"type": "text", "text": "a"}, {"type": "refusal", "refusal": "b"}])
        == "a\nb"
    )
    with pytest.raises(ChatTemplateError):
        content_parts_to_text([{"type": "image_url", "image_url": {"url": "x"}}])


def test_none_fields_dropped_like_transformers(fl_qwen3: Tokenizer, hf_qwen3: Any) -> None:
    messages = [
        {"role": "user", "content": "hi", "name": None},
        {"role": "assistant", "content": "hello", "tool_calls": None, "reasoning_content": None},
    ]
    assert _ours(fl_qwen3, messages, add_generation_prompt=False) == _hf(hf_qwen3, messages)


def test_detect_content_format() -> None:
    assert detect_content_format(LLAMA31_TEMPLATE) == "string"
    assert detect_content_format(MISTRAL_TEMPLATE) == "string"
    assert detect_content_format(OPENAI_PARTS_TEMPLATE) == "openai"
    aliased = (
        "{% for m in messages %}{% set c = m.content %}"
        "{% for p in c %}{{ p.text }}{% endfor %}{% endfor %}"
    )
    assert detect_content_format(aliased) == "openai"
    indexed = "{% for m in messages %}{{ m['content'][0]['text'] }}{% endfor %}"
    assert detect_content_format(indexed) == "openai"
    assert detect_content_format("{% for m in messages %}{{ m.content }}{% endfor %}") == "string"
    assert detect_content_format("{% for x in %}", default="openai") == "openai"  # unparsable
    assert detect_content_format(None) == "string"


def test_error_cases(fl_smollm: Tokenizer, hf_smollm: Any) -> None:
    messages = CHATS["assistant_last"]
    with pytest.raises(ChatTemplateError, match="not compatible"):
        _ours(fl_smollm, messages, continue_final_message=True, add_generation_prompt=True)
    with pytest.raises(ValueError, match="not compatible"):
        _hf(hf_smollm, messages, continue_final_message=True, add_generation_prompt=True)
    with pytest.raises(ChatTemplateError, match="empty"):
        _ours(fl_smollm, [])
    with pytest.raises(ChatTemplateError, match='no "content"'):
        _ours(fl_smollm, [{"role": "assistant"}], continue_final_message=True)
    # A template that drops the final message cannot be continued.
    dropping = "{% for m in messages[:-1] %}{{ m.content }}{% endfor %}{# content #}"
    with pytest.raises(ChatTemplateError, match="does not appear"):
        _ours(fl_smollm, messages, dropping, continue_final_message=True)
    with pytest.raises(ValueError, match="does not appear"):
        _hf(hf_smollm, messages, dropping, continue_final_message=True)
    with pytest.raises(ChatTemplateError, match="Invalid chat template"):
        _ours(fl_smollm, messages, "{% for %}")
    # The sandbox keeps templates away from Python internals.
    with pytest.raises(Exception, match="unsafe|underscore|not safely"):
        _ours(
            fl_smollm,
            messages,
            "{{ messages.__class__.__mro__ }}{{ ''.__class__.__subclasses__() }}",
        )
