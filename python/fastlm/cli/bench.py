"""`fastlm bench latency|throughput`: vLLM-style benchmarks, in-process against the engine or,
with `--base-url`, against a running server (`fastlm serve`, or any OpenAI-compatible server
with vLLM's `ignore_eos`).

  latency     --batch-size prompts of --input-len tokens generate --output-len tokens each,
              --num-iters times after --num-iters-warmup: seconds per batch (avg, percentiles)
  throughput  --num-prompts such prompts at once (server: at most --max-concurrency in flight):
              requests/s, output tokens/s, total tokens/s; with a server also time to first
              token and time per output token

Prompts are seeded random draws from the token ids of an English text, so they are distinct
(little prefix-cache reuse) and decode to ordinary tokens; every request runs to --output-len
(ignore_eos), greedy. Results go to stdout; `--output-json` also writes them to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from fastlm.cli.common import add_model_args, add_prefix_caching_arg

# Source of prompt tokens: common words, so every id is an ordinary token of any vocabulary.
_TEXT = (
    "The history of the city begins with a small settlement on the river, where traders met "
    "to exchange grain, salt and cloth. Over the centuries it grew into a market town, then a "
    "busy port with bridges, churches, schools and a famous library. Today its streets are full "
    "of students, musicians and visitors who come for the museums, the old harbour and the food."
)


def make_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("mode", choices=["latency", "throughput"])
    p.add_argument("--input-len", type=int, default=None, help="prompt tokens (default 32/128)")
    p.add_argument("--output-len", type=int, default=128, help="tokens generated per request")
    p.add_argument("--batch-size", type=int, default=8, help="latency: prompts per batch")
    p.add_argument("--num-iters-warmup", type=int, default=1, help="latency: untimed batches")
    p.add_argument("--num-iters", type=int, default=3, help="latency: timed batches")
    p.add_argument("--num-prompts", type=int, default=32, help="throughput: requests")
    p.add_argument(
        "--max-concurrency",
        type=int,
        default=None,
        help="throughput with --base-url: requests in flight at most (default: all)",
    )
    p.add_argument("--bench-seed", type=int, default=0, help="seed of the random prompts")
    p.add_argument("--output-json", default=None, help="also write the results to this file")
    s = p.add_argument_group("server (serve-style run)")
    s.add_argument(
        "--base-url",
        default=None,
        help="a running server, e.g. http://127.0.0.1:8000 (default: run the engine in-process)",
    )
    s.add_argument(
        "--served-model-name", default=None, help="model name to request (default: /v1/models)"
    )
    s.add_argument(
        "--api-key", default=None, help="bearer token (default: $FASTLM_API_KEY, $OPENAI_API_KEY)"
    )
    s.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    e = p.add_argument_group("engine (in-process run)")
    e.add_argument("--max-num-seqs", type=int, default=256, help="most sequences in one batch")
    e.add_argument(
        "--max-num-batched-tokens", type=int, default=None, help="token budget of one step"
    )
    add_prefix_caching_arg(e)
    add_model_args(p)
    return p


def random_prompts(pool: Sequence[int], count: int, length: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.choice(pool) for _ in range(length)] for _ in range(count)]


def percentiles(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]

    return {
        "mean": statistics.fmean(ordered),
        "p50": pick(50),
        "p90": pick(90),
        "p99": pick(99),
    }


# -- in-process engine ------------------------------------------------------------------------


class EngineTarget:
    def __init__(self, prog: str, args: argparse.Namespace) -> None:
        from fastlm.cli.common import load_llm
        from fastlm.sampling_params import SamplingParams

        self.llm = load_llm(
            prog,
            args,
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            enable_prefix_caching=args.enable_prefix_caching,
        )
        self.params = SamplingParams(
            temperature=0.0, max_tokens=args.output_len, ignore_eos=True, seed=args.seed
        )
        self.name = str(self.llm.runtime.files.path)

    def token_pool(self) -> list[int]:
        return self.llm.tokenizer.encode(_TEXT, add_special_tokens=False)

    def run(self, prompts: list[list[int]]) -> tuple[float, int]:
        """Seconds for all prompts together, and tokens generated."""
        start = time.perf_counter()
        outs = self.llm.generate(
            [{"prompt_token_ids": p} for p in prompts], self.params, use_tqdm=False
        )
        seconds = time.perf_counter() - start
        return seconds, sum(len(o.outputs[0].token_ids) for o in outs)


# -- a running server -------------------------------------------------------------------------


@dataclass
class RequestTiming:
    ttft: float
    e2e: float
    output_tokens: int


class ServerTarget:
    def __init__(self, args: argparse.Namespace) -> None:
        self.base = args.base_url.rstrip("/")
        self.base = self.base.removesuffix("/v1")
        self.timeout = args.timeout
        self.output_len = args.output_len
        key = args.api_key or os.environ.get("FASTLM_API_KEY") or os.environ.get("OPENAI_API_KEY")
        self.headers = {"Content-Type": "application/json"}
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        self.name = args.served_model_name or self._first_model()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base + path, data=data, headers=self.headers, method=method
        )
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:500]
            raise SystemExit(f"fastlm bench: {method} {path} -> HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as e:
            raise SystemExit(f"fastlm bench: cannot reach {self.base}{path}: {e}") from None

    def _first_model(self) -> str:
        with self._call("GET", "/v1/models") as resp:
            models = json.load(resp)["data"]
        if not models:
            raise SystemExit(f"fastlm bench: {self.base}/v1/models lists no model")
        return str(models[0]["id"])

    def token_pool(self) -> list[int]:
        with self._call(
            "POST", "/tokenize", {"model": self.name, "prompt": _TEXT, "add_special_tokens": False}
        ) as resp:
            tokens: list[int] = json.load(resp)["tokens"]
        return tokens

    def one(self, prompt: list[int]) -> RequestTiming:
        body = {
            "model": self.name,
            "prompt": prompt,
            "max_tokens": self.output_len,
            "temperature": 0.0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        start = time.perf_counter()
        ttft = None
        tokens = 0
        with self._call("POST", "/v1/completions", body) as resp:
            for raw in resp:
                line = raw.decode().strip()
                if not line.startswith("data:") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[5:])
                if chunk.get("choices") and ttft is None:
                    ttft = time.perf_counter() - start
                if chunk.get("usage"):
                    tokens = int(chunk["usage"]["completion_tokens"])
        e2e = time.perf_counter() - start
        return RequestTiming(ttft if ttft is not None else e2e, e2e, tokens)

    def run_all(
        self, prompts: list[list[int]], concurrency: int
    ) -> tuple[float, list[RequestTiming]]:
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            timings = list(pool.map(self.one, prompts))
        return time.perf_counter() - start, timings

    def run(self, prompts: list[list[int]]) -> tuple[float, int]:
        seconds, timings = self.run_all(prompts, len(prompts))
        return seconds, sum(t.output_tokens for t in timings)


# -- the two benchmarks -----------------------------------------------------------------------


def bench_latency(
    args: argparse.Namespace, run: Callable[[list[list[int]]], tuple[float, int]], pool: list[int]
) -> dict[str, Any]:
    seconds: list[float] = []
    generated = 0
    total = args.num_iters_warmup + args.num_iters
    for i in range(total):
        prompts = random_prompts(pool, args.batch_size, args.input_len, args.bench_seed + i)
        dt, n = run(prompts)
        kind = "warm-up" if i < args.num_iters_warmup else "timed"
        print(f"  batch {i + 1}/{total} ({kind}): {dt:.3f} s", file=sys.stderr, flush=True)
        if i >= args.num_iters_warmup:
            seconds.append(dt)
            generated += n
    stats = percentiles(seconds)
    return {
        "latency_s": stats,
        "output_tokens_per_s": generated / sum(seconds),
        "per_stream_tokens_per_s": args.output_len / stats["mean"],
    }


def bench_throughput(
    args: argparse.Namespace, target: EngineTarget | ServerTarget, pool: list[int]
) -> dict[str, Any]:
    prompts = random_prompts(pool, args.num_prompts, args.input_len, args.bench_seed)
    prompt_tokens = args.num_prompts * args.input_len
    out: dict[str, Any] = {}
    if isinstance(target, ServerTarget):
        concurrency = args.max_concurrency or args.num_prompts
        seconds, timings = target.run_all(prompts, concurrency)
        generated = sum(t.output_tokens for t in timings)
        out["max_concurrency"] = concurrency
        out["ttft_s"] = percentiles([t.ttft for t in timings])
        out["tpot_s"] = percentiles(
            [(t.e2e - t.ttft) / (t.output_tokens - 1) for t in timings if t.output_tokens > 1]
            or [0.0]
        )
    else:
        seconds, generated = target.run(prompts)
    out.update(
        {
            "elapsed_s": seconds,
            "requests_per_s": args.num_prompts / seconds,
            "output_tokens_per_s": generated / seconds,
            "total_tokens_per_s": (generated + prompt_tokens) / seconds,
            "output_tokens": generated,
        }
    )
    return out


def _print_results(results: dict[str, Any]) -> None:
    for key, value in results.items():
        if isinstance(value, dict):
            text = ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in value.items())
            print(f"{key.removesuffix('_s')}: {text}")
        elif isinstance(value, float):
            print(f"{key}: {value:.2f}")
        else:
            print(f"{key}: {value}")


def main(argv: list[str] | None = None, prog: str = "fastlm bench") -> int:
    p = make_parser(prog)
    args = p.parse_args(argv)
    if args.input_len is None:
        args.input_len = 32 if args.mode == "latency" else 128
    for flag in ("input_len", "output_len", "batch_size", "num_iters", "num_prompts"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    if args.num_iters_warmup < 0:
        p.error("--num-iters-warmup must be at least 0")
    if args.max_concurrency is not None and args.base_url is None:
        p.error("--max-concurrency needs --base-url (the in-process engine batches all prompts)")
    target: EngineTarget | ServerTarget
    if args.base_url:
        target = ServerTarget(args)
    else:
        target = EngineTarget(prog, args)
    pool = target.token_pool()
    if not pool:
        raise SystemExit(f"{prog}: the tokenizer gave no tokens for the prompt text")
    where = args.base_url or "in-process engine"
    print(
        f"{prog} {args.mode}: {target.name} ({where}), input {args.input_len} tokens, "
        f"output {args.output_len} tokens",
        file=sys.stderr,
        flush=True,
    )
    if args.mode == "latency":
        results = bench_latency(args, target.run, pool)
    else:
        results = bench_throughput(args, target, pool)
    results = {
        "mode": args.mode,
        "model": target.name,
        "target": where,
        "input_len": args.input_len,
        "output_len": args.output_len,
        **({"batch_size": args.batch_size} if args.mode == "latency" else {}),
        **({"num_prompts": args.num_prompts} if args.mode == "throughput" else {}),
        **results,
    }
    _print_results(results)
    if args.output_json:
        with open(args.output_json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
