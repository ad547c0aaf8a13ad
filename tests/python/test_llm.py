"""The offline API (fastlm.LLM) on the real default model, SmolLM2-135M-Instruct (GGUF)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from fastlm import LLM, SamplingParams

# The real default model in float32: tens of seconds on 2 cores.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llm(smollm_gguf: Path) -> LLM:
    # No model argument: the default model, which smollm_gguf put in the cache.
    return LLM(dtype="float32", max_model_len=1024, kv_cache_memory=256 << 20)


def test_generate_greedy_is_deterministic_and_batched(llm: LLM) -> None:
    sp = SamplingParams(temperature=0.0, max_tokens=24)
    prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time"]
    batch = llm.generate(prompts, sp, use_tqdm=False)
    single = [llm.generate(p, sp, use_tqdm=False)[0] for p in prompts]
    for b, s, p in zip(batch, single, prompts, strict=True):
        assert b.prompt == p
        assert b.prompt_token_ids == llm.tokenizer.encode(p)
        assert b.outputs[0].token_ids == s.outputs[0].token_ids
        assert b.outputs[0].text == llm.tokenizer.decode(b.outputs[0].token_ids)
        assert b.outputs[0].finish_reason in ("length", "stop")
    assert "Paris" in batch[0].outputs[0].text


def test_token_id_prompts(llm: LLM) -> None:
    ids = llm.tokenizer.encode("Hello, my name is")
    a = llm.generate(
        {"prompt_token_ids": ids}, SamplingParams(temperature=0, max_tokens=8), use_tqdm=False
    )[0]
    b = llm.generate(ids, SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)[0]
    assert a.prompt_token_ids == ids and a.outputs[0].token_ids == b.outputs[0].token_ids


def test_chat_uses_the_template_and_stops_at_eos(llm: LLM) -> None:
    msgs = [{"role": "user", "content": "What is 2+2? Answer with one number."}]
    out = llm.chat(msgs, SamplingParams(temperature=0, max_tokens=64), use_tqdm=False)[0]
    text = llm.apply_chat_template(msgs)
    assert text.endswith("<|im_start|>assistant\n")
    assert out.prompt_token_ids == llm.tokenizer.encode(text, add_special_tokens=False)
    assert out.outputs[0].finish_reason == "stop"
    assert "4" in out.outputs[0].text
    assert "<|im_end|>" not in out.outputs[0].text


def test_seeds_and_n(llm: LLM) -> None:
    sp = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=16, seed=7, n=2)
    a = llm.generate("Write a word:", sp, use_tqdm=False)[0]
    b = llm.generate("Write a word:", sp, use_tqdm=False)[0]
    assert len(a.outputs) == 2 and [o.index for o in a.outputs] == [0, 1]
    assert [o.token_ids for o in a.outputs] == [o.token_ids for o in b.outputs]
    assert a.outputs[0].token_ids != a.outputs[1].token_ids


def test_stop_strings_never_leak(llm: LLM) -> None:
    free = (
        llm.generate(
            "Count: 1, 2, 3,", SamplingParams(temperature=0, max_tokens=20), use_tqdm=False
        )[0]
        .outputs[0]
        .text
    )
    assert " 5" in free
    out = llm.generate(
        "Count: 1, 2, 3,", SamplingParams(temperature=0, max_tokens=20, stop=[" 5"]), use_tqdm=False
    )[0].outputs[0]
    assert out.text == free[: free.index(" 5")]
    assert out.finish_reason == "stop" and out.stop_reason == " 5"
    inc = llm.generate(
        "Count: 1, 2, 3,",
        SamplingParams(temperature=0, max_tokens=20, stop=[" 5"], include_stop_str_in_output=True),
        use_tqdm=False,
    )[0].outputs[0]
    assert inc.text == free[: free.index(" 5") + 2]
    assert not llm.engine.has_unfinished()
    s = llm.engine.stats()
    assert s.num_free_blocks == s.num_blocks


def test_logprobs_and_prompt_logprobs(llm: LLM) -> None:
    sp = SamplingParams(temperature=0, max_tokens=6, logprobs=3, prompt_logprobs=2)
    out = llm.generate("The sky is", sp, use_tqdm=False)[0]
    comp = out.outputs[0]
    assert comp.logprobs is not None and len(comp.logprobs) == 6
    total = 0.0
    for tok, lp in zip(comp.token_ids, comp.logprobs, strict=True):
        assert tok in lp and lp[tok].rank == 1  # greedy: the chosen token ranks first
        assert len(lp) == 3
        assert all(v.logprob <= 0.0 for v in lp.values())
        total += lp[tok].logprob
    assert comp.cumulative_logprob == pytest.approx(total, rel=1e-5)
    pl = out.prompt_logprobs
    assert pl is not None and len(pl) == len(out.prompt_token_ids) and pl[0] is None
    for tok, entry in zip(out.prompt_token_ids[1:], pl[1:], strict=True):
        assert entry is not None and tok in entry and math.isfinite(entry[tok].logprob)


def test_bad_input_is_a_value_error_and_leaves_nothing_behind(llm: LLM) -> None:
    with pytest.raises(ValueError):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="maximum model length"):
        llm.generate("hi " * 2000, SamplingParams(max_tokens=4), use_tqdm=False)
    s = llm.engine.stats()
    assert s.num_running == 0 and s.num_waiting == 0 and s.num_free_blocks == s.num_blocks
    ok = llm.generate("Hello", SamplingParams(temperature=0, max_tokens=3), use_tqdm=False)[0]
    assert len(ok.outputs[0].token_ids) == 3
