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
    from fastlm import SamplingParams, StructuredOutputsParams

    params = SamplingParams(
        temperature=0.8,
        seed=0,
        max_tokens=max_tokens,
        ignore_eos=not constrained,  # a grammar decides where a constrained output ends
        structured_outputs=StructuredOutputsParams(json=SCHEMA) if constrained else None,
    )
    prompts = [PROMPT] * batch
    llm.generate(prompts[:1], SamplingParams(max_tokens=2), use_tqdm=False)  # warm
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    tokens = sum(len(o.token_ids) for out in outs for o in out.outputs)
    return tokens / elapsed


def compile_times(llm: Any) -> dict[str, float]:
    from fastlm import StructuredOutputsParams

    grammars = llm.runtime.grammars
    start = time.perf_counter()
    grammars.ll_tokenizer  # noqa: B018 - built once per model, in a background thread
    tokenizer_s = time.perf_counter() - start
    schema = {**SCHEMA, "description": f"cold {time.time()}"}  # never seen before
    start = time.perf_counter()
    grammars.matcher(grammars.compile(StructuredOutputsParams(json=schema)))
    cold = time.perf_counter() - start
    start = time.perf_counter()
    grammars.matcher(grammars.compile(StructuredOutputsParams(json=schema)))
    cached = time.perf_counter() - start
    return {
        "tokenizer_s": tokenizer_s,
        "compile_cold_ms": cold * 1e3,
        "compile_cached_ms": cached * 1e3,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    from fastlm import LLM

    llm = LLM(args.model, max_model_len=512)
    results: dict[str, Any] = compile_times(llm)
    print(
        f"llguidance tokenizer {results['tokenizer_s']:.2f} s (once per model); grammar compile "
        f"cold {results['compile_cold_ms']:.1f} ms, cached {results['compile_cached_ms']:.2f} ms"
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
            f"batch {batch:2d}: unconstrained {best[False]:7.1f} tok/s, json-schema "
            f"{best[True]:7.1f} tok/s, ratio {ratio:.3f} (target >= 0.90)"
        )
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
