"""Structured outputs cost: decode tokens/s with a JSON-schema constraint vs unconstrained, at
batch 1 and batch 16, and grammar compile time (cold and cached), in one run.

Offline LLM API, default model (SmolLM2-135M-Instruct GGUF) unless --model. That path is
synchronous: each step's masks are computed (llguidance, in Python) after the previous step and
before the next, so mask time adds to step time -- the worst case. The server's background loop
computes a request's next mask while the engine runs the forward of the step that needs it.
Rounds alternate constrained / unconstrained and each side reports its best round (a shared
machine is noisy).
    PYTHONPATH=python:build/pypath python bench/bench_structured.py [--model M] [--rounds 3]
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


def decode_rate(llm: Any, batch: int, constrained: bool, max_tokens: int) -> float:
    from fastlm import SamplingParams

    prompts = [PROMPT] * batch
    llm.generate(prompts[:1], SamplingParams(max_tokens=2), use_tqdm=False)  # warm
    start = time.perf_counter()
    outs = llm.generate(prompts, _params(constrained, max_tokens), use_tqdm=False)
    elapsed = time.perf_counter() - start
    tokens = sum(len(o.token_ids) for out in outs for o in out.outputs)
    return tokens / elapsed


def _params(constrained: bool, max_tokens: int) -> Any:
    from fastlm import SamplingParams, StructuredOutputsParams

    return SamplingParams(
        temperature=0.8,
        seed=0,
        max_tokens=max_tokens,
        ignore_eos=not constrained,  # a grammar decides where a constrained output ends
        structured_outputs=StructuredOutputsParams(json=SCHEMA) if constrained else None,
    )


async def async_rate(engine: Any, batch: int, constrained: bool, max_tokens: int) -> float:
    """The server's path: the engine's own loop, masks pushed while the next forward runs."""
    import asyncio
    import itertools

    ids = engine.tokenizer.encode(PROMPT)
    counter = itertools.count()

    async def one() -> int:
        n = 0
        async for out in engine.generate(
            f"b{next(counter)}", PROMPT, ids, _params(constrained, max_tokens)
        ):
            n = len(out.outputs[0].token_ids)
        return n

    start = time.perf_counter()
    tokens = sum(await asyncio.gather(*(one() for _ in range(batch))))
    return tokens / (time.perf_counter() - start)


def compile_times(llm: Any) -> dict[str, float]:
    from fastlm import StructuredOutputsParams

    grammars = llm.runtime.grammars
    start = time.perf_counter()
    grammars.ll_tokenizer  # noqa: B018 - built once per model, in a background thread
    tokenizer_s = time.perf_counter() - start
    schema = {**SCHEMA, "description": f"cold {time.time()}"}  # never seen before
    start = time.perf_counter()
    grammar = grammars.compile(StructuredOutputsParams(json=schema))
    cold = time.perf_counter() - start
    start = time.perf_counter()
    grammars.compile(StructuredOutputsParams(json=schema))
    cached = time.perf_counter() - start
    start = time.perf_counter()
    grammars.matcher(grammar).bitmask()
    matcher = time.perf_counter() - start
    return {
        "tokenizer_s": tokenizer_s,
        "compile_cold_ms": cold * 1e3,
        "compile_cached_ms": cached * 1e3,
        "matcher_first_mask_ms": matcher * 1e3,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    from fastlm import LLM

    llm = LLM(args.model, max_model_len=512, kv_cache_memory=256 << 20)
    results: dict[str, Any] = compile_times(llm)
    print(
        f"llguidance tokenizer {results['tokenizer_s']:.2f} s (once per model); grammar compile "
        f"cold {results['compile_cold_ms']:.1f} ms, cached {results['compile_cached_ms']:.3f} ms; "
        f"a request's matcher + first mask {results['matcher_first_mask_ms']:.1f} ms"
    )
    for batch in (1, 16):
        best = {True: 0.0, False: 0.0}
        for _ in range(args.rounds):
            for constrained in (False, True):
                rate = decode_rate(llm, batch, constrained, args.max_tokens)
                best[constrained] = max(best[constrained], rate)
        ratio = best[True] / best[False]
        results[f"batch{batch}"] = {
            "unconstrained_tok_s": best[False],
            "constrained_tok_s": best[True],
            "ratio": ratio,
        }
        print(
            f"offline (sync), batch {batch:2d}: unconstrained {best[False]:7.1f} tok/s, "
            f"json-schema {best[True]:7.1f} tok/s, ratio {ratio:.3f} (target >= 0.90)"
        )
    import asyncio

    from fastlm.async_engine import AsyncEngine

    async def server_path() -> None:
        engine = AsyncEngine(llm.runtime)
        engine.start()
        try:
            for batch in (1, 16):
                best = {True: 0.0, False: 0.0}
                for _ in range(args.rounds):
                    for constrained in (False, True):
                        rate = await async_rate(engine, batch, constrained, args.max_tokens)
                        best[constrained] = max(best[constrained], rate)
                ratio = best[True] / best[False]
                results[f"async_batch{batch}"] = {
                    "unconstrained_tok_s": best[False],
                    "constrained_tok_s": best[True],
                    "ratio": ratio,
                }
                print(
                    f"engine loop (server path), batch {batch:2d}: unconstrained "
                    f"{best[False]:7.1f} tok/s, json-schema {best[True]:7.1f} tok/s, "
                    f"ratio {ratio:.3f}"
                )
        finally:
            engine.shutdown()

    asyncio.run(server_path())
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
