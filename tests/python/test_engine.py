"""The C++ engine driven through fastlm._core: continuous batching must not change results.

Batch invariance, seeds, prefix caching, chunked prefill, preemption under a tiny KV budget,
aborts, priorities — each compared token for token, and every KV block accounted for.
"""

from __future__ import annotations

import random

import pytest
from fastlm import _core as core
from tiny_models import tiny_llama  # noqa: E402

VOCAB = 512


def make_engine(**kw: object) -> core.Engine:
    cfg = core.EngineConfig()
    cfg.model = str(kw.pop("model", tiny_llama()))
    cfg.dtype = str(kw.pop("dtype", "float32"))
    cfg.kv_cache_memory = int(kw.pop("kv_cache_memory", 64 << 20))  # type: ignore[call-overload]
    for k, v in kw.items():
        setattr(cfg, k, v)
    return core.Engine(cfg)


def params(
    max_tokens: int = 32, temperature: float = 0.0, seed: int | None = None, **kw: object
) -> core.SamplingParams:
    p = core.SamplingParams()
    p.max_tokens = max_tokens
    p.temperature = temperature
    p.seed = seed
    p.ignore_eos = True
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def run(
    engine: core.Engine,
    requests: dict[str, tuple[list[int], core.SamplingParams]],
    max_steps: int = 10_000,
) -> dict[str, list[int]]:
    for rid, (prompt, p) in requests.items():
        engine.add_request(rid, prompt, p)
    out: dict[str, list[int]] = {rid: [] for rid in requests}
    done: set[str] = set()
    for _ in range(max_steps):
        if len(done) == len(requests):
            break
        for d in engine.step():
            out[d.request_id].extend(d.new_token_ids)
            if d.finished:
                done.add(d.request_id)
    assert len(done) == len(requests)
    return out


def prompts(n: int, seed: int = 1, lo: int = 3, hi: int = 60) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1, VOCAB - 1) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


def assert_all_blocks_free(engine: core.Engine) -> None:
    s = engine.stats()
    assert s.num_running == 0 and s.num_waiting == 0
    assert s.num_free_blocks == s.num_blocks


@pytest.fixture(scope="module")
def engine() -> core.Engine:
    return make_engine()


@pytest.mark.parametrize("temperature,seed", [(0.0, None), (0.9, 1234)])
def test_same_tokens_alone_and_among_15_others(
    engine: core.Engine, temperature: float, seed: int | None
) -> None:
    ps = prompts(16)
    alone = run(engine, {"x": (ps[0], params(32, temperature, seed))})["x"]
    batch = {"x": (ps[0], params(32, temperature, seed))}
    for i, p in enumerate(ps[1:]):
        batch[f"o{i}"] = (p, params(16 + i, 0.7, seed=i))
    together = run(engine, batch)["x"]
    assert len(alone) == 32
    assert together == alone
    assert_all_blocks_free(engine)


def test_same_seed_same_tokens_different_seed_differs(engine: core.Engine) -> None:
    p = prompts(1, seed=7)[0]
    a = run(engine, {"a": (p, params(24, 1.0, 42))})["a"]
    b = run(engine, {"b": (p, params(24, 1.0, 42))})["b"]
    c = run(engine, {"c": (p, params(24, 1.0, 43))})["c"]
    assert a == b
    assert a != c


def test_prefix_cache_hits_change_nothing() -> None:
    eng = make_engine(block_size=16)
    shared = prompts(1, seed=3, lo=70, hi=70)[0]
    first = run(eng, {"a": (shared + [5, 6], params(20))})["a"]
    before = eng.stats().prefix_cache_hits
    second = run(eng, {"b": (shared + [5, 6], params(20))})["b"]
    assert eng.stats().prefix_cache_hits - before >= 64  # 4 full blocks reused
    assert second == first
    cold = run(make_engine(enable_prefix_caching=False), {"c": (shared + [5, 6], params(20))})
    assert cold["c"] == first
    assert_all_blocks_free(eng)


def test_chunked_prefill_matches_one_shot() -> None:
    p = prompts(1, seed=9, lo=200, hi=200)[0]
    one = run(make_engine(max_num_batched_tokens=4096), {"a": (p, params(16))})["a"]
    chunked_engine = make_engine(max_num_batched_tokens=48)
    chunked = run(chunked_engine, {"a": (p, params(16)), "b": (p[:50], params(40))})["a"]
    assert chunked == one


def test_preemption_under_tiny_kv_budget_changes_no_output() -> None:
    ps = prompts(12, seed=5, lo=20, hi=40)
    reqs = {f"r{i}": (p, params(48, 0.8, seed=100 + i)) for i, p in enumerate(ps)}
    roomy = run(make_engine(), reqs)
    # 2 layers * 2 (K,V) * 16 tokens * 2 heads * 16 dims * 4 bytes = 8 KiB a block; 12 blocks.
    tight = make_engine(kv_cache_memory=12 * 8192, max_model_len=96)
    reqs2 = {f"r{i}": (p, params(48, 0.8, seed=100 + i)) for i, p in enumerate(ps)}
    got = run(tight, reqs2)
    assert tight.stats().num_preemptions > 0
    assert got == roomy
    assert_all_blocks_free(tight)


def test_abort_frees_blocks_at_once(engine: core.Engine) -> None:
    for i, p in enumerate(prompts(6, seed=11)):
        engine.add_request(f"ab{i}", p, params(200))
    for _ in range(3):
        engine.step()
    assert engine.stats().num_free_blocks < engine.stats().num_blocks
    for i in range(6):
        engine.abort(f"ab{i}")
    reasons = {}
    while engine.has_unfinished():
        for d in engine.step():
            if d.finished:
                reasons[d.request_id] = d.finish_reason
    assert reasons == {f"ab{i}": "abort" for i in range(6)}
    assert_all_blocks_free(engine)


def test_stop_token_ids_max_tokens_and_min_tokens(engine: core.Engine) -> None:
    p = prompts(1, seed=13)[0]
    free = run(engine, {"a": (p, params(20))})["a"]
    stop_at = free[5]
    engine.add_request("s", p, params(20, stop_token_ids=[stop_at]))
    got, reason, stop_tok = [], None, None
    while engine.has_unfinished():
        for d in engine.step():
            got.extend(d.new_token_ids)
            if d.finished:
                reason, stop_tok = d.finish_reason, d.stop_token
    first = free.index(stop_at)
    assert got == free[: first + 1] and reason == "stop" and stop_tok == stop_at
    assert len(run(engine, {"m": (p, params(7))})["m"]) == 7


def test_background_loop_and_eventfd() -> None:
    import select

    eng = make_engine()
    eng.start_loop()
    try:
        eng.add_request("bg", prompts(1)[0], params(10))
        got: list[int] = []
        finished = False
        while not finished:
            ready, _, _ = select.select([eng.output_fd], [], [], 10.0)
            assert ready, "no wakeup from the engine loop"
            for d in eng.poll_outputs():
                got.extend(d.new_token_ids)
                finished = finished or d.finished
        assert len(got) == 10
    finally:
        eng.stop_loop()


def test_invalid_requests_are_refused_cleanly(engine: core.Engine) -> None:
    with pytest.raises(ValueError, match="empty"):
        engine.add_request("e1", [], params())
    with pytest.raises(ValueError, match="vocabulary"):
        engine.add_request("e2", [1, VOCAB + 5], params())
    with pytest.raises(ValueError, match="maximum model length"):
        engine.add_request("e3", [1] * (engine.max_model_len + 1), params())
    bad = params()
    bad.top_p = 0.0
    with pytest.raises(ValueError):
        engine.add_request("e4", [1, 2], bad)
    assert not engine.has_unfinished()
    assert_all_blocks_free(engine)


def test_requests_admitted_together_share_prompt_blocks() -> None:
    """n > 1 fans out into requests admitted in one step: the later ones reuse the first one's
    prompt blocks at once, and their tokens are unchanged by it."""
    eng = make_engine()
    p = prompts(1, seed=21, lo=64, hi=64)[0]  # 4 full blocks
    reqs = {f"{i}_x": (p, params(8, 0.8, seed=i)) for i in range(3)}
    out = run(eng, reqs)
    # Children 1 and 2 each hit 3 blocks (the last prompt token is always recomputed).
    assert eng.stats().prefix_cache_hits == 2 * 48
    cold = make_engine(enable_prefix_caching=False)
    for i in range(3):
        assert run(cold, {f"c{i}": (p, params(8, 0.8, seed=i))})[f"c{i}"] == out[f"{i}_x"]
    assert_all_blocks_free(eng)
