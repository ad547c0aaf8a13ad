"""Serving benchmark: N concurrent streaming clients against `fastlm-server` on loopback, next to
the engine's own offline throughput on the same work, in the same run.

For each concurrency N: N clients each send one /v1/completions request at the same moment
(random token-id prompts of --prompt-len, --gen-len new tokens, greedy, ignore_eos, stream) and
time every chunk. Offline: the same N requests submitted straight to the engine (AsyncEngine:
the C++ engine loop and the output processor, no HTTP). The server runs in its own process (the
CLI, as users run it); the offline engine runs in this one after the server stops.

    PYTHONPATH=python:build/pypath python bench/serving.py [--concurrency 1 8 32] [--json-out F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class RequestTiming:
    ttft: float = 0.0
    itl: list[float] = field(default_factory=list)
    tokens: int = 0
    latency: float = 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


async def one_request(
    client: httpx.AsyncClient, prompt: list[int], gen_len: int, start_gate: asyncio.Event
) -> RequestTiming:
    body = {
        "prompt": prompt,
        "max_tokens": gen_len,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "return_token_ids": True,
    }
    await start_gate.wait()
    t0 = time.perf_counter()
    timing = RequestTiming()
    last = None
    async with client.stream("POST", "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            n = len(chunk["choices"][0].get("token_ids") or [])
            if n == 0:
                continue
            now = time.perf_counter()
            if last is None:
                timing.ttft = now - t0
            else:
                # Tokens that arrive together share the gap (the client lagged behind).
                timing.itl.extend([(now - last) / n] * n)
            last = now
            timing.tokens += n
    timing.latency = time.perf_counter() - t0
    return timing


async def run_http(url: str, prompts: list[list[int]], gen_len: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=len(prompts) + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        gate = asyncio.Event()
        tasks = [asyncio.create_task(one_request(client, p, gen_len, gate)) for p in prompts]
        await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        gate.set()
        timings = await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
    tokens = sum(t.tokens for t in timings)
    itl = [x for t in timings for x in t.itl]
    ttft = [t.ttft for t in timings]
    return {
        "requests": len(prompts),
        "wall_s": wall,
        "requests_per_s": len(prompts) / wall,
        "output_tokens_per_s": tokens / wall,
        "ttft_p50_ms": percentile(ttft, 0.5) * 1e3,
        "ttft_p99_ms": percentile(ttft, 0.99) * 1e3,
        "itl_p50_ms": percentile(itl, 0.5) * 1e3,
        "itl_p99_ms": percentile(itl, 0.99) * 1e3,
        "output_tokens": tokens,
    }


def start_server(args: argparse.Namespace, port: int) -> tuple[subprocess.Popen[bytes], Any]:
    cmd = [
        sys.executable,
        "-m",
        "fastlm.server.cli",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--uvicorn-log-level",
        "warning",
        "--disable-log-requests",
        "--dtype",
        args.dtype,
        "--no-enable-prefix-caching",
    ]
    if args.model:
        cmd.insert(3, args.model)
    if args.kv_cache_memory:
        cmd += ["--kv-cache-memory", str(args.kv_cache_memory)]
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=os.environ.copy())
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise SystemExit(f"server exited:\n{log.read().decode()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc, log
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not become ready")


def run_offline(args: argparse.Namespace, work: dict[int, list[list[int]]]) -> dict[int, Any]:
    """The same requests straight into the engine: its C++ loop thread and output processor
    (AsyncEngine), without HTTP, JSON or SSE. With --offline-llm, `LLM.generate` (the engine's
    synchronous step() path) instead."""
    from fastlm.sampling_params import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=args.gen_len, ignore_eos=True)
    out: dict[int, Any] = {}
    if args.offline_llm:
        from fastlm import LLM

        llm = LLM(
            args.model,
            dtype=args.dtype,
            enable_prefix_caching=False,
            kv_cache_memory=args.kv_cache_memory,
        )
        llm.generate([work[min(work)][0]], params, use_tqdm=False)  # warm-up
        for n, prompts in work.items():
            t0 = time.perf_counter()
            results = llm.generate(prompts, params, use_tqdm=False)
            wall = time.perf_counter() - t0
            tokens = sum(len(r.outputs[0].token_ids) for r in results)
            out[n] = {
                "wall_s": wall,
                "output_tokens_per_s": tokens / wall,
                "requests_per_s": len(prompts) / wall,
            }
        return out

    from fastlm.async_engine import AsyncEngine
    from fastlm.runtime import EngineArgs, Runtime

    runtime = Runtime(
        EngineArgs(
            model=args.model,
            dtype=args.dtype,
            enable_prefix_caching=False,
            kv_cache_memory=args.kv_cache_memory,
        )
    )

    async def run_all() -> None:
        engine = AsyncEngine(runtime)
        engine.start()

        async def one(rid: str, prompt: list[int], p: SamplingParams) -> int:
            last = None
            async for o in engine.generate(rid, None, prompt, p):
                last = o
            assert last is not None
            return len(last.outputs[0].token_ids)

        try:
            await one("warm-up", work[min(work)][0], params)
            for n, prompts in work.items():
                t0 = time.perf_counter()
                tokens = await asyncio.gather(
                    *[one(f"{n}-{i}", p, params) for i, p in enumerate(prompts)]
                )
                wall = time.perf_counter() - t0
                out[n] = {
                    "wall_s": wall,
                    "output_tokens_per_s": sum(tokens) / wall,
                    "requests_per_s": len(prompts) / wall,
                }
        finally:
            engine.shutdown()

    asyncio.run(run_all())
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="default: SmolLM2-135M GGUF from fastlm's cache")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--gen-len", type=int, default=128)
    p.add_argument("--kv-cache-memory", type=int, default=1 << 30)
    p.add_argument("--port", type=int, default=18123)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", default=None)
    p.add_argument(
        "--offline-llm",
        action="store_true",
        help="offline figure from LLM.generate instead of the engine loop",
    )
    args = p.parse_args()
    # fastlm-server defaults to passive OpenMP waits; run the offline engine the same way.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    rng = random.Random(args.seed)
    # Ordinary vocabulary ids (SmolLM2: 49152 tokens; the first few hundred are special/bytes).
    work = {
        n: [[rng.randrange(1000, 30000) for _ in range(args.prompt_len)] for _ in range(n)]
        for n in args.concurrency
    }

    proc, log = start_server(args, args.port)
    url = f"http://127.0.0.1:{args.port}"
    http: dict[int, Any] = {}
    try:
        asyncio.run(run_http(url, work[min(work)][:1], 8))  # warm-up
        for n, prompts in work.items():
            http[n] = asyncio.run(run_http(url, prompts, args.gen_len))
            print(
                f"http    N={n:3d}: {http[n]['output_tokens_per_s']:8.1f} tok/s "
                f"{http[n]['requests_per_s']:6.2f} req/s  TTFT p50/p99 "
                f"{http[n]['ttft_p50_ms']:.0f}/{http[n]['ttft_p99_ms']:.0f} ms  ITL p50/p99 "
                f"{http[n]['itl_p50_ms']:.1f}/{http[n]['itl_p99_ms']:.1f} ms",
                flush=True,
            )
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    offline = run_offline(args, work)
    rows = []
    for n in args.concurrency:
        ratio = http[n]["output_tokens_per_s"] / offline[n]["output_tokens_per_s"]
        print(
            f"offline N={n:3d}: {offline[n]['output_tokens_per_s']:8.1f} tok/s  "
            f"http/offline = {ratio:.1%}",
            flush=True,
        )
        rows.append(
            {"concurrency": n, "http": http[n], "offline": offline[n], "http_over_offline": ratio}
        )
    print(
        "\n| N | req/s | out tok/s (HTTP) | out tok/s (offline) | HTTP/offline "
        "| TTFT p50 / p99 ms | ITL p50 / p99 ms |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        h = r["http"]
        print(
            f"| {r['concurrency']} | {h['requests_per_s']:.2f} | {h['output_tokens_per_s']:.1f} "
            f"| {r['offline']['output_tokens_per_s']:.1f} | {r['http_over_offline']:.0%} | "
            f"{h['ttft_p50_ms']:.0f} / {h['ttft_p99_ms']:.0f} | "
            f"{h['itl_p50_ms']:.1f} / {h['itl_p99_ms']:.1f} |"
        )
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"args": vars(args), "results": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
