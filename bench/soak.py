"""Soak test: minutes of mixed load against a real server, then the books must balance.

Worker threads send a random mix: completions and chats (plain and streaming), streams the
client drops mid-answer, requests the client abandons mid-prefill, explicit n > 1, tokenize,
and malformed requests. At the end: no 5xx, nothing running or waiting, every KV block free,
and the server's RSS growth after warm-up (reported; a bench figure, not a CI assertion).

    PYTHONPATH=python:build/pypath python bench/soak.py --minutes 10            # default model
    PYTHONPATH=python:build/pypath python bench/soak.py --model path --seconds 60

tests/python/test_soak.py runs `soak()` for 60 seconds in CI on the tiny test model.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

PROMPTS = [
    "The capital of France is",
    "Write a haiku about the sea.",
    "1, 2, 3, 4,",
    "Once upon a time",
    "Explain prefix caching in one sentence.",
]


@dataclass
class SoakResult:
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    actions: Counter[str] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    num_running: int = -1
    num_waiting: int = -1
    blocks_in_use: int = -1
    rss_start_mib: float = 0.0
    rss_end_mib: float = 0.0

    @property
    def rss_growth(self) -> float:
        return (self.rss_end_mib - self.rss_start_mib) / max(self.rss_start_mib, 1e-9)

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "statuses": dict(sorted(self.statuses.items())),
            "actions": dict(sorted(self.actions.items())),
            "5xx": len(self.server_errors),
            "num_running": self.num_running,
            "num_waiting": self.num_waiting,
            "blocks_in_use": self.blocks_in_use,
            "rss_start_mib": round(self.rss_start_mib, 1),
            "rss_end_mib": round(self.rss_end_mib, 1),
            "rss_growth_pct": round(100 * self.rss_growth, 2),
        }


def rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _one(c: httpx.Client, rng: random.Random, model: str, max_tokens: int) -> tuple[str, int]:
    """One random action; returns (action, HTTP status) (0: the client gave up on purpose)."""
    prompt = rng.choice(PROMPTS) + " " + str(rng.randrange(10**6))
    gen = {"model": model, "max_tokens": rng.randint(1, max_tokens), "temperature": 0.8}
    roll = rng.random()
    if roll < 0.2:
        r = c.post("/v1/completions", json={**gen, "prompt": prompt, "logprobs": 2})
        return "completion", r.status_code
    if roll < 0.35:
        messages = [{"role": "user", "content": prompt}]
        r = c.post("/v1/chat/completions", json={**gen, "messages": messages})
        return "chat", r.status_code
    if roll < 0.5:
        body = {**gen, "messages": [{"role": "user", "content": prompt}], "stream": True}
        with c.stream("POST", "/v1/chat/completions", json=body) as r:
            for _ in r.iter_lines():
                pass
        return "chat_stream", r.status_code
    if roll < 0.62:  # the client drops the stream after a few chunks
        body = {**gen, "prompt": prompt, "stream": True, "max_tokens": max_tokens}
        with c.stream("POST", "/v1/completions", json=body) as r:
            status = r.status_code
            for i, _ in enumerate(r.iter_lines()):
                if i >= rng.randint(1, 4):
                    break
        return "stream_disconnect", status
    if roll < 0.72:  # the client gives up before the answer (mid-prefill or mid-decode)
        try:
            c.post(
                "/v1/completions",
                json={**gen, "prompt": prompt * 4, "max_tokens": max_tokens},
                timeout=rng.uniform(0.001, 0.05),
            )
        except httpx.TimeoutException:
            return "abandoned", 0
        return "abandoned", 200
    if roll < 0.8:
        r = c.post("/v1/completions", json={**gen, "prompt": prompt, "n": 3, "seed": 1})
        return "n3", r.status_code
    if roll < 0.88:
        r = c.post("/tokenize", json={"model": model, "prompt": prompt})
        return "tokenize", r.status_code
    bad = rng.choice(
        [
            {"prompt": prompt, "max_tokens": "5"},
            {"messages": "hi"},
            {"prompt": prompt, "temperature": -1},
            {"prompt": prompt, "n": 10**6},
            {"prompt": prompt, "top_k": -5},
        ]
    )
    path = "/v1/chat/completions" if "messages" in bad else "/v1/completions"
    r = c.post(path, json={"model": model, **bad})
    return "bad_request", r.status_code


def soak(
    url: str,
    runtime: Any,
    seconds: float,
    *,
    model: str,
    workers: int = 4,
    max_tokens: int = 24,
    seed: int = 0,
    warmup_s: float | None = None,
) -> SoakResult:
    """Runs the mixed load for `seconds` against the server at `url` whose engine is
    `runtime`'s (in this process), then waits for it to go idle and takes the books."""
    result = SoakResult()
    # RSS is measured from the end of warm-up (allocator arenas, caches): a quarter of the run.
    warmup = min(60.0, seconds / 4) if warmup_s is None else warmup_s
    lock = threading.Lock()
    start = time.monotonic()
    deadline = start + seconds
    rss_marked = threading.Event()

    def worker(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        with httpx.Client(base_url=url, timeout=120) as c:
            while time.monotonic() < deadline:
                try:
                    action, status = _one(c, rng, model, max_tokens)
                except httpx.HTTPError as e:
                    action, status = f"client_error:{type(e).__name__}", 0
                with lock:
                    result.requests += 1
                    result.actions[action] += 1
                    result.statuses[status] += 1
                    if status >= 500:
                        result.server_errors.append(action)
                    if not rss_marked.is_set() and time.monotonic() - start > warmup:
                        result.rss_start_mib = rss_mib()
                        rss_marked.set()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    idle_deadline = time.monotonic() + 30
    while True:
        s = runtime.engine.stats()
        idle = s.num_running == 0 and s.num_waiting == 0 and s.num_free_blocks == s.num_blocks
        if idle or time.monotonic() > idle_deadline:
            break
        time.sleep(0.05)
    result.num_running, result.num_waiting = int(s.num_running), int(s.num_waiting)
    result.blocks_in_use = int(s.num_blocks - s.num_free_blocks)
    result.rss_end_mib = rss_mib()
    if not rss_marked.is_set():
        result.rss_start_mib = result.rss_end_mib
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default=None, help="model path (default: the embedded SmolLM2)")
    ap.add_argument("--minutes", type=float, default=None)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--kv-cache-memory", type=int, default=64 * 2**20)
    ap.add_argument("--max-model-len", type=int, default=2048)
    args = ap.parse_args()

    from fastlm.async_engine import AsyncEngine
    from fastlm.runtime import EngineArgs, Runtime
    from fastlm.server.local import ServerThread
    from fastlm.server.serving import ServerConfig

    runtime = Runtime(
        EngineArgs(
            model=args.model,
            kv_cache_memory=args.kv_cache_memory,
            max_model_len=args.max_model_len,
        )
    )
    config = ServerConfig(served_model_names=["soak"], model_path=str(runtime.files.path))
    srv = ServerThread(config, engine=AsyncEngine(runtime)).start()
    try:
        seconds = args.minutes * 60 if args.minutes is not None else args.seconds
        res = soak(
            srv.url,
            runtime,
            seconds,
            model="soak",
            workers=args.workers,
            max_tokens=args.max_tokens,
        )
    finally:
        srv.stop()
    print(json.dumps(res.summary(), indent=2))
    ok = not res.server_errors and res.num_running == 0 and res.blocks_in_use == 0
    ok = ok and res.rss_growth < 0.05
    print("PASS" if ok else "FAIL")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
