"""Structured outputs cost: decode tokens/s with a JSON-schema constraint vs unconstrained, at
batch 1 and batch 16, and grammar compile time (cold and cached), in one run, for each backend
(llguidance; xgrammar when installed).

Offline LLM API, default model (SmolLM2-135M-Instruct GGUF) unless --model. That path is
synchronous: each step's masks are computed (llguidance, in Python) after the previous step and
before the next, so mask time adds to step time -- the worst case. The server's background loop
computes a request's next mask while the engine runs the forward of the step that needs it.
Rounds alternate unconstrained / each backend and each side reports its best round (a shared
machine is noisy).
    PYTHONPATH=python:build/pypath python bench/bench_structured.py [--model M] [--rounds 3]
        [--backends llguidance,xgrammar]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
            "required": ["city", "zip"],
        },
    },
    "required": ["name", "age", "tags", "address"],
}
PROMPT = "Describe a fictional person as JSON with name, age, tags and address."


def decode_rate(llm: Any, batch: int, backend: str | None, max_tokens: int) -> float:
    """Decode tok/s; `backend` None: unconstrained."""
    from fastlm import SamplingParams

    prompts = [PROMPT] * batch
    llm.generate(prompts[:1], SamplingParams(max_tokens=2), use_tqdm=False)  # warm
    start = time.perf_counter()
    outs = llm.generate(prompts, _params(backend, max_tokens), use_tqdm=False)
    elapsed = time.perf_counter() - start
    tokens = sum(len(o.token_ids) for out in outs for o in out.outputs)
    return tokens / elapsed


def _params(backend: str | None, max_tokens: int) -> Any:
    from fastlm import SamplingParams, StructuredOutputsParams

    return SamplingParams(
        temperature=0.8,
        seed=0,
        max_tokens=max_tokens,
        ignore_eos=backend is None,  # a grammar decides where a constrained output ends
        structured_outputs=(
            None if backend is None else StructuredOutputsParams(json=SCHEMA, backend=backend)
        ),
    )


async def async_rate(engine: Any, batch: int, backend: str | None, max_tokens: int) -> float:
    """The server's path: the engine's own loop, masks pushed while the next forward runs."""
    import asyncio
    import itertools

    ids = engine.tokenizer.encode(PROMPT)
    counter = itertools.count()

    async def one() -> int:
        n = 0
        async for out in engine.generate(
            f"b{next(counter)}", PROMPT, ids, _params(backend, max_tokens)
        ):
            n = len(out.outputs[0].token_ids)
        return n

    start = time.perf_counter()
    tokens = sum(await asyncio.gather(*(one() for _ in range(batch))))
    return tokens / (time.perf_counter() - start)


def compile_times(llm: Any, backend: str) -> dict[str, float]:
    from fastlm import StructuredOutputsParams

    grammars = llm.runtime.grammars
    start = time.perf_counter()
    if backend == "xgrammar":
        grammars.xgrammar_backend()  # its tokenizer info, once per model
    else:
        grammars.ll_tokenizer  # noqa: B018 - built once per model, in a background thread
    tokenizer_s = time.perf_counter() - start
    schema = {**SCHEMA, "description": f"cold {time.time()}"}  # never seen before
    spec = StructuredOutputsParams(json=schema, backend=backend)
    start = time.perf_counter()
    grammars.validate(spec)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    grammars.validate(spec)
    cached = time.perf_counter() - start
    start = time.perf_counter()
    grammars.matchers(spec, 1)  # from the cache; computes the first mask
    matcher = time.perf_counter() - start
    return {
        "tokenizer_s": tokenizer_s,
        "compile_cold_ms": cold * 1e3,
        "compile_cached_ms": cached * 1e3,
        "matcher_first_mask_ms": matcher * 1e3,
    }


def _report(
    results: dict[str, Any], key: str, label: str, best: dict[str | None, float], batch: int
) -> None:
    results[key] = {"unconstrained_tok_s": best[None]}
    line = f"{label}, batch {batch:2d}: unconstrained {best[None]:7.1f} tok/s"
    for backend, rate in best.items():
        if backend is not None:
            ratio = rate / best[None]
            results[key][backend] = {"constrained_tok_s": rate, "ratio": ratio}
            line += f"; {backend} {rate:7.1f} tok/s, ratio {ratio:.3f}"
    print(line + " (target >= 0.90)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--backends", default="llguidance,xgrammar")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    from fastlm import LLM
    from fastlm.structured_xgrammar import available

    backends = [b for b in args.backends.split(",") if b != "xgrammar" or available()]
    llm = LLM(args.model, max_model_len=512, kv_cache_memory=256 << 20)
    results: dict[str, Any] = {}
    for backend in backends:
        t = results[f"compile_{backend}"] = compile_times(llm, backend)
        print(
            f"{backend}: tokenizer {t['tokenizer_s']:.2f} s (once per model); grammar compile "
            f"cold {t['compile_cold_ms']:.1f} ms, cached {t['compile_cached_ms']:.3f} ms; "
            f"a request's matcher + first mask {t['matcher_first_mask_ms']:.1f} ms"
        )
    sides: list[str | None] = [None, *backends]
    for batch in (1, 16):
        best: dict[str | None, float] = {b: 0.0 for b in sides}
        for _ in range(args.rounds):
            for backend in sides:
                rate = decode_rate(llm, batch, backend, args.max_tokens)
                best[backend] = max(best[backend], rate)
        _report(results, f"batch{batch}", "offline (sync)", best, batch)
    import asyncio

    from fastlm.async_engine import AsyncEngine

    async def server_path() -> None:
        engine = AsyncEngine(llm.runtime)
        engine.start()
        try:
            for batch in (1, 16):
                best: dict[str | None, float] = {b: 0.0 for b in sides}
                for _ in range(args.rounds):
                    for backend in sides:
                        rate = await async_rate(engine, batch, backend, args.max_tokens)
                        best[backend] = max(best[backend], rate)
                _report(results, f"async_batch{batch}", "engine loop (server path)", best, batch)
        finally:
            engine.shutdown()

    asyncio.run(server_path())
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
