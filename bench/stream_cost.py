"""Per-chunk cost of streaming in the Python layer, by position in the answer.

Feeds the OutputProcessor (real tokenizer, real incremental detokenizer, stop-string checker,
logprobs) one engine delta per step, as the engine loop does for one streaming request, and
times each step from token 1 to --tokens. CUMULATIVE outputs copy the whole answer every step
(O(n) a chunk, O(n^2) an answer); DELTA outputs (what the server uses, vLLM's
RequestOutputKind.DELTA) carry only the new token, so the per-chunk time stays flat.

    PYTHONPATH=python:build/pypath python bench/stream_cost.py --tokens 4000
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from fastlm.model_files import resolve_model
from fastlm.output_processor import OutputProcessor
from fastlm.sampling_params import RequestOutputKind, SamplingParams
from fastlm.tokenizer import load_tokenizer


@dataclass
class _Lp:  # the shape of _core.TokenLogprobs
    token: int
    logprob: float
    rank: int
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class _Delta:  # the shape of _core.RequestOutputDelta
    request_id: str
    new_token_ids: list[int]
    logprobs: list[Any]
    finished: bool = False
    finish_reason: str | None = None
    stop_token: int | None = None
    num_cached_tokens: int = 0
    prompt_logprobs: list[Any] = field(default_factory=list)
    error: str = ""


def run(tokenizer: Any, kind: RequestOutputKind, tokens: list[int], top: int) -> list[float]:
    proc = OutputProcessor(tokenizer, [])
    params = SamplingParams(max_tokens=len(tokens), logprobs=top, stop=["\n\n\n\n"])
    params.output_kind = kind
    (eid,) = proc.add_request("r", None, [1, 2, 3], params)
    times = []
    for i, t in enumerate(tokens):
        last = i == len(tokens) - 1
        lp = _Lp(t, -1.0, 1, [(t + k, -1.0 - k) for k in range(top)])
        d = _Delta(eid, [t], [lp], last, "length" if last else None)
        t0 = time.perf_counter()
        outs, _ = proc.process([d])
        # What a streaming endpoint reads from each output.
        for o in outs[0].outputs:
            _ = (o.text, len(o.token_ids), len(o.logprobs or []))
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, default=4000)
    ap.add_argument("--logprobs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tokenizer = load_tokenizer(resolve_model(None))
    rng = random.Random(0)
    vocab = [t for t in range(1000, 20000)]
    tokens = [rng.choice(vocab) for _ in range(args.tokens)]
    marks = [m for m in (10, 100, 1000, 2000, 4000, args.tokens) if m <= args.tokens]
    marks = sorted(set(marks))
    report: dict[str, dict[str, float]] = {}
    for kind in (RequestOutputKind.CUMULATIVE, RequestOutputKind.DELTA):
        runs = [run(tokenizer, kind, tokens, args.logprobs) for _ in range(args.repeats)]
        row = {}
        for m in marks:
            # Median over a window of 10 steps ending at the mark, best of the repeats.
            lo = max(0, m - 10)
            row[f"token {m}"] = min(statistics.median(r[lo:m]) for r in runs) * 1e6
        row["whole answer (ms)"] = min(sum(r) for r in runs) * 1e3
        report[kind.name] = row
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"per-chunk Python output processing, microseconds ({args.tokens} tokens, "
        f"logprobs={args.logprobs})"
    )
    header = list(next(iter(report.values())))
    print(f"{'kind':<12}" + "".join(f"{h:>20}" for h in header))
    for name, row in report.items():
        print(f"{name:<12}" + "".join(f"{row[h]:>20.1f}" for h in header))


if __name__ == "__main__":
    main()
