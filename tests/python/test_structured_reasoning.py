"""Structured outputs and tool grammars after the reasoning block (--reasoning-parser qwen3): a
tiny random Qwen3 model with the real Qwen3 tokenizer and chat template behind a real server,
the official openai client.

While the model reasons every token is allowed; once `</think>` is sampled the grammar applies.
A random model does not close its think block by itself: the tests force it with logit_bias
(real sampling: `<think>` opens the block on the first token, `</think>` ends it a few tokens
later; after that the grammar's mask forbids both), or close it in the prompt with the
template's enable_thinking=False.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import llguidance as llg
import pytest

pytestmark = pytest.mark.server

MODEL = "tiny-qwen3"
THINK, END_THINK = 151667, 151668  # Qwen3's <think> and </think> (single added tokens)
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 5},
        "warm": {"type": "boolean"},
    },
    "required": ["city", "warm"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA}}
ASK = [{"role": "user", "content": "Weather in Oslo, as JSON?"}]
# The think block open in the prompt (the assistant's reply continued after "<think>"), and
# </think> pushed so that the random model closes it after a few tokens.
THINKING = [*ASK, {"role": "assistant", "content": "<think>\nLet me see"}]
END_SOON = {str(END_THINK): 11}
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 4}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]


@pytest.fixture(scope="module")
def qwen3_model(tmp_path_factory: pytest.TempPathFactory, qwen3_dir: Path) -> Path:
    """A one-layer random Qwen3 (q/k norms, tied embeddings) written straight to safetensors
    (transformers would spend seconds initialising the 151k-row embedding)."""
    import shutil

    import numpy as np
    from safetensors.numpy import save_file

    vocab, hidden, inter, heads, kv_heads, head_dim = 151669, 32, 64, 2, 1, 16
    config = {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": 1,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "bos_token_id": 151643,
        "eos_token_id": 151645,
    }
    rng = np.random.default_rng(0)

    def w(*shape: int) -> Any:
        return rng.normal(0.0, 0.1, shape).astype(np.float32)

    def norm(n: int) -> Any:
        return rng.uniform(0.5, 1.5, n).astype(np.float32)

    layer = "model.layers.0."
    tensors = {
        "model.embed_tokens.weight": w(vocab, hidden),
        "model.norm.weight": norm(hidden),
        layer + "input_layernorm.weight": norm(hidden),
        layer + "post_attention_layernorm.weight": norm(hidden),
        layer + "self_attn.q_proj.weight": w(heads * head_dim, hidden),
        layer + "self_attn.k_proj.weight": w(kv_heads * head_dim, hidden),
        layer + "self_attn.v_proj.weight": w(kv_heads * head_dim, hidden),
        layer + "self_attn.o_proj.weight": w(hidden, heads * head_dim),
        layer + "self_attn.q_norm.weight": norm(head_dim),
        layer + "self_attn.k_norm.weight": norm(head_dim),
        layer + "mlp.gate_proj.weight": w(inter, hidden),
        layer + "mlp.up_proj.weight": w(inter, hidden),
        layer + "mlp.down_proj.weight": w(hidden, inter),
    }
    folder = tmp_path_factory.mktemp("tiny_qwen3")
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(qwen3_dir / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def runtime(qwen3_model: Path) -> Any:
    from fastlm.runtime import EngineArgs, Runtime

    return Runtime(
        EngineArgs(
            model=str(qwen3_model),
            dtype="float32",
            max_model_len=320,
            kv_cache_memory=8 * 2**20,
            max_num_seqs=8,
        )
    )


@pytest.fixture(scope="module")
def client(runtime: Any) -> Any:
    import openai
    from fixtures_server import start_server

    srv = start_server(
        runtime,
        served_model_names=[MODEL],
        structured_outputs_config={"disable_any_whitespace": True},
        reasoning_parser="qwen3",
    )
    yield openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)
    srv.stop()


def _answer_ids(ids: list[int]) -> list[int]:
    """The output tokens after the think block (all of them when there is none)."""
    return ids[ids.index(END_THINK) + 1 :] if END_THINK in ids else ids


def _check(runtime: Any, content: str | None, reason: str, ids: list[int]) -> bool:
    """Valid JSON for SCHEMA when the grammar accepted; a prefix it accepts when cut."""
    from fastlm.structured_outputs import StructuredOutputsParams

    if reason == "stop":
        jsonschema.validate(json.loads(content or ""), SCHEMA)
        return True
    assert reason == "length", reason
    grammars = runtime.grammars
    spec = StructuredOutputsParams(json=SCHEMA, disable_any_whitespace=True)
    m = llg.LLMatcher(grammars.ll_tokenizer, grammars.compile(spec))
    assert m.consume_tokens(_answer_ids(ids)) and not m.is_error(), content
    return False


def _streamed(client: Any, **kwargs: Any) -> tuple[str, str, str | None, list[int]]:
    reasoning = content = ""
    ids: list[int] = []
    reason = None
    for chunk in client.chat.completions.create(**kwargs, stream=True):
        for c in chunk.choices:
            reasoning += getattr(c.delta, "reasoning_content", None) or ""
            content += c.delta.content or ""
            ids += getattr(c, "token_ids", None) or []
            reason = c.finish_reason or reason
    return reasoning, content, reason, ids


def _json_after_thinking(seed: int) -> dict[str, Any]:
    """A request continuing THINKING, JSON for SCHEMA after the think block (which END_SOON
    makes the model close), with the token ids."""
    return dict(
        model=MODEL,
        messages=THINKING,
        response_format=FORMAT,
        max_tokens=40,
        seed=seed,
        logit_bias=END_SOON,
        extra_body={
            "return_token_ids": True,
            "add_generation_prompt": False,
            "continue_final_message": True,
        },
    )


def test_json_after_the_think_block(client: Any, runtime: Any) -> None:
    """The model reasons unconstrained (the grammar would forbid this text), then answers
    with valid JSON; streamed == not streamed."""
    valid = 0
    for seed in range(2):
        kwargs = _json_after_thinking(seed)
        r = client.chat.completions.create(**kwargs)
        c = r.choices[0]
        ids = c.token_ids  # type: ignore[attr-defined]
        assert END_THINK in ids[1:], ids  # at least one token of reasoning
        reasoning = c.message.reasoning_content  # type: ignore[attr-defined]
        assert reasoning is not None and reasoning.strip()
        valid += _check(runtime, c.message.content, c.finish_reason, ids)
        assert _streamed(client, **kwargs) == (
            reasoning,
            c.message.content or "",
            c.finish_reason,
            ids,
        )
    assert valid


def _json_for_ask(client: Any, logit_bias: dict[str, int], n: int = 1, **extra: Any) -> Any:
    """ASK answered as JSON for SCHEMA (seed 0), with the token ids."""
    return client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        response_format=FORMAT,
        max_tokens=40,
        seed=0,
        n=n,
        logit_bias=logit_bias,
        extra_body={"return_token_ids": True, **extra},
    )


def test_the_output_may_open_a_think_block(client: Any, runtime: Any) -> None:
    """Qwen3's template leaves thinking to the model: the first token may be the grammar's or
    <think> (pushed here by logit_bias with </think>: the block opens, then closes as soon as
    </think> wins), and the grammar starts after the block."""
    (c,) = _json_for_ask(client, {str(THINK): 100, str(END_THINK): 100}).choices
    ids = c.token_ids  # type: ignore[attr-defined]
    assert ids[0] == THINK and END_THINK in ids, ids  # </think>: not the grammar's first token
    end = ids.index(END_THINK)
    assert set(ids[1:end]) <= {THINK} and not {THINK, END_THINK} & set(ids[end + 1 :]), ids
    assert _check(runtime, c.message.content, c.finish_reason, ids)


def test_thinking_disabled_in_the_template_constrains_from_the_first_token(
    client: Any, runtime: Any
) -> None:
    """enable_thinking=False closes the think block in the prompt: the first token is the
    grammar's, even with <think> pushed by logit_bias."""
    r = _json_for_ask(
        client, {str(THINK): 100}, n=2, chat_template_kwargs={"enable_thinking": False}
    )
    for c in r.choices:
        ids = c.token_ids  # type: ignore[attr-defined]
        assert THINK not in ids and END_THINK not in ids
        assert c.message.reasoning_content is None  # type: ignore[attr-defined]
        _check(runtime, c.message.content, c.finish_reason, ids)


def test_required_tool_call_after_the_think_block(client: Any) -> None:
    kwargs = dict(
        model=MODEL,
        messages=THINKING,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=40,
        seed=1,
        logit_bias=END_SOON,
        extra_body={"add_generation_prompt": False, "continue_final_message": True},
    )
    whole = client.chat.completions.create(**kwargs)
    c = whole.choices[0]
    assert c.message.reasoning_content  # type: ignore[attr-defined]
    assert c.finish_reason == "tool_calls", c
    (call,) = c.message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)
    with client.chat.completions.stream(**kwargs) as stream:
        streamed = stream.get_final_completion().choices[0]
    got = streamed.message.tool_calls[0].function
    assert (got.name, got.arguments) == (call.function.name, call.function.arguments)
    assert streamed.message.reasoning_content == c.message.reasoning_content  # type: ignore[attr-defined]


def test_offline_llm_gates_and_splits_like_the_server(
    client: Any, runtime: Any, qwen3_model: Path
) -> None:
    """LLM(reasoning_parser="qwen3") reasons freely, then follows the grammar: the same seeded
    request gives the server's tokens, reasoning and content."""
    from fastlm import LLM, SamplingParams
    from fastlm.structured_outputs import StructuredOutputsParams

    llm = LLM(
        str(qwen3_model),
        dtype="float32",
        max_model_len=320,
        kv_cache_memory=8 * 2**20,
        max_num_seqs=8,
        reasoning_parser="qwen3",
        structured_outputs_config={"disable_any_whitespace": True},
    )
    params = SamplingParams(
        max_tokens=40,
        seed=0,
        logit_bias={END_THINK: 11},
        structured_outputs=StructuredOutputsParams(json=SCHEMA),
    )
    ((out,), (plain,)) = (
        llm.chat(
            conversation,
            p,
            use_tqdm=False,
            add_generation_prompt=False,
            continue_final_message=True,
        )
        for conversation, p in ((THINKING, params), (THINKING, SamplingParams()))
    )
    o = out.outputs[0]
    assert END_THINK in o.token_ids[1:] and o.reasoning_content, o
    _check(runtime, o.content, str(o.finish_reason), list(o.token_ids))
    assert params.structured_outputs.disable_any_whitespace is False  # the caller's, untouched
    c = client.chat.completions.create(**_json_after_thinking(0)).choices[0]
    assert (list(o.token_ids), o.reasoning_content, o.content, o.finish_reason) == (
        c.token_ids,  # type: ignore[attr-defined]
        c.message.reasoning_content,  # type: ignore[attr-defined]
        c.message.content or "",
        c.finish_reason,
    )
    # Unconstrained, the whole unterminated output is reasoning (the prompt opened the block).
    assert plain.outputs[0].reasoning_content == plain.outputs[0].text
    for bad, says in (
        ({"reasoning_parser": "nope"}, "unknown reasoning parser"),
        ({"structured_outputs_config": {"nope": 1}}, "unknown keys"),
    ):
        with pytest.raises(ValueError, match=says):
            LLM(str(qwen3_model), **bad)  # refused before the model loads
