"""Throughput of fastlm's linear op against torch's F.linear on SmolLM2-135M shapes.

Decode (small M) is memory-bandwidth bound: reported as GB/s of weights streamed. Prefill
(large M) is compute bound: reported as GFLOP/s. Run with the dev build on PYTHONPATH:
    PYTHONPATH=python:build-ops/pypath python bench/ops_linear.py [--isa avx2]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from fastlm import _core

ops = _core.ops

HIDDEN, INTER, VOCAB, KV = 576, 1536, 49152, 192
LAYERS = 30
# One decoder layer (q, k, v, o, gate_up, down) and the LM head, as (N, K).
LAYER_SHAPES = [
    (HIDDEN, HIDDEN),
    (KV, HIDDEN),
    (KV, HIDDEN),
    (HIDDEN, HIDDEN),
    (2 * INTER, HIDDEN),
    (HIDDEN, INTER),
]
HEAD_SHAPE = (VOCAB, HIDDEN)
# --gemv also takes these block formats (weights quantized with ops.quantize_rows).
QUANTIZED = ("q8_0", "q4_0", "q4_1")


def bf16_bits(t: torch.Tensor) -> np.ndarray:
    return t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def timeit(fn: Callable[[], object], min_time: float = 0.3) -> float:
    fn()
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed > min_time:
            return elapsed / n


def stream_bandwidth() -> float:
    """Read bandwidth of a 256 MiB sum: the ceiling for decode."""
    a = torch.ones(64 << 20, dtype=torch.float32)
    t = timeit(lambda: a.sum(), 0.5)
    return a.numel() * 4 / t / 1e9


def weight_set(dtype: str) -> list[tuple[object, torch.Tensor]]:
    """All linear weights of the model (distinct buffers, ~2x L3 for bf16)."""
    out = []
    for _ in range(LAYERS):
        for n, k in LAYER_SHAPES:
            out.append(torch.randn(n, k) * 0.02)
    out.append(torch.randn(*HEAD_SHAPE) * 0.02)
    tw = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    return [(bf16_bits(w) if dtype == "bfloat16" else w.numpy(), w.to(tw)) for w in out]


def bench_decode(dtype: str, ms: list[int]) -> None:
    ws = weight_set(dtype)
    nbytes = sum(w.nbytes for w, _ in ws)
    tdt = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    print(f"\n== decode, all {len(ws)} weights of the model ({nbytes / 2**20:.0f} MiB {dtype}) ==")
    for m in ms:
        xs = {k: torch.randn(m, k) for k in (HIDDEN, INTER)}
        xn = {k: v.numpy() for k, v in xs.items()}
        xt = {k: v.to(tdt) for k, v in xs.items()}

        def run_fastlm(xn: dict[int, np.ndarray] = xn) -> None:
            for w, _ in ws:
                ops.linear(xn[w.shape[1]], w, dtype)

        def run_torch(xt: dict[int, torch.Tensor] = xt) -> None:
            for _, w in ws:
                F.linear(xt[w.shape[1]], w)

        tf, tt = timeit(run_fastlm, 1.0), timeit(run_torch, 1.0)
        print(
            f"M={m}: fastlm {nbytes / tf / 1e9:6.1f} GB/s ({tf * 1e3:6.2f} ms)  "
            f"torch {nbytes / tt / 1e9:6.1f} GB/s ({tt * 1e3:6.2f} ms)  speedup {tt / tf:4.2f}x"
        )


def bench_shapes(dtype: str, ms: list[int]) -> None:
    tdt = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    print(f"\n== per shape, {dtype} ==")
    for n, k in [(HIDDEN, HIDDEN), (2 * INTER, HIDDEN), (HIDDEN, INTER), HEAD_SHAPE]:
        w = torch.randn(n, k) * 0.02
        wn = bf16_bits(w) if dtype == "bfloat16" else w.numpy()
        wt = w.to(tdt)
        for m in ms:
            x = torch.randn(m, k)
            xn, xt = x.numpy(), x.to(tdt)
            tf = timeit(lambda: ops.linear(xn, wn, dtype))  # noqa: B023
            tt = timeit(lambda: F.linear(xt, wt))  # noqa: B023
            flop = 2.0 * m * n * k
            print(
                f"M={m:4d} N={n:5d} K={k:4d}: fastlm {flop / tf / 1e9:7.1f} GFLOP/s "
                f"{wn.nbytes / tf / 1e9:6.1f} GB/s | torch {flop / tt / 1e9:7.1f} GFLOP/s "
                f"{wn.nbytes / tt / 1e9:6.1f} GB/s | speedup {tt / tf:5.2f}x"
            )


def bench_canonical(dtype: str, ms: list[int], reps: int) -> None:
    """The batch-invariant canonical GEMM (weights pre-packed, as models do at load) against
    oneDNN (batch invariance off, GEMV crossover 0), interleaved, median of `reps` rounds."""
    print(f"\n== canonical GEMM vs oneDNN, {dtype}, median of {reps} interleaved rounds ==")
    for n, k in [(HIDDEN, HIDDEN), (2 * INTER, HIDDEN), (HIDDEN, INTER), HEAD_SHAPE]:
        w = torch.randn(n, k) * 0.02
        wn = bf16_bits(w) if dtype == "bfloat16" else w.numpy()
        packed = ops.prepack_linear(wn, dtype)
        for m in ms:
            xn = torch.randn(m, k).numpy()
            canon, dnnl = [], []
            for _ in range(reps):
                ops.set_batch_invariant(True)
                canon.append(timeit(lambda: ops.linear(xn, wn, dtype), 0.2))  # noqa: B023
                ops.set_batch_invariant(False)
                ops.set_gemv_max_rows(0)
                dnnl.append(timeit(lambda: ops.linear(xn, wn, dtype), 0.2))  # noqa: B023
                ops.set_gemv_max_rows(-1)
                ops.set_batch_invariant(True)
            tc, td = float(np.median(canon)), float(np.median(dnnl))
            flop = 2.0 * m * n * k
            print(
                f"M={m:4d} N={n:5d} K={k:4d}: canonical {flop / tc / 1e9:6.1f} GFLOP/s "
                f"{wn.nbytes / tc / 1e9:5.1f} GB/s | oneDNN {flop / td / 1e9:6.1f} GFLOP/s "
                f"{wn.nbytes / td / 1e9:5.1f} GB/s | canonical/oneDNN time {tc / td:4.2f}"
            )
        del packed


def bench_gemv_packed(dtype: str, threads: list[int], reps: int) -> None:
    """Decode as the models run it: the 30 layers' matrices (fused qkv, o, fused gate_up,
    down) and the LM head pre-packed (as at load; for q8_0 / q4_0 / q4_1 quantized into
    blocks), M = 1, in model order (264 MiB in bf16: 8x the L3), as GB/s of weights read, whole
    pass and per shape (each call timed inside the pass, so every shape streams from memory).
    Compare with `fastlm_bench --mode membw`."""
    shapes = [(HIDDEN + 2 * KV, HIDDEN), (HIDDEN, HIDDEN), (2 * INTER, HIDDEN), (HIDDEN, INTER)]
    ws = [torch.randn(n, k) * 0.02 for _ in range(LAYERS) for n, k in shapes]
    ws.append(torch.randn(*HEAD_SHAPE) * 0.02)
    xs = {k: torch.randn(1, k).numpy() for k in (HIDDEN, INTER)}
    names = [f"{w.shape[0]}x{w.shape[1]}" for w in ws]
    if dtype in QUANTIZED:
        # Packed blocks as a GGUF file (or --quantization) holds them: qgemm's decode GEMV.
        wn = [ops.quantize_rows(w.numpy(), dtype) for w in ws]
        packs = []

        def run(x: np.ndarray, w: np.ndarray) -> None:
            ops.qlinear(x, w, dtype)
    else:
        wn = [bf16_bits(w) if dtype == "bfloat16" else w.numpy() for w in ws]
        packs = [ops.prepack_linear(w, dtype) for w in wn]

        def run(x: np.ndarray, w: np.ndarray) -> None:
            ops.linear(x, w, dtype)

    total = sum(w.nbytes for w in wn)
    print(f"\n== GEMV (M = 1), pre-packed {dtype}, {total / 2**20:.0f} MiB, best of {reps} ==")
    previous = ops.num_threads()
    try:
        for t in threads:
            ops.set_num_threads(t)
            best: dict[str, float] = {}
            for _ in range(reps + 1):  # the first pass warms up
                spent = dict.fromkeys(names, 0.0)
                start = time.perf_counter()
                for name, w, wf in zip(names, wn, ws, strict=True):
                    t0 = time.perf_counter()
                    run(xs[wf.shape[1]], w)
                    spent[name] += time.perf_counter() - t0
                spent["all"] = time.perf_counter() - start
                best = {k: min(v, best.get(k, v)) for k, v in spent.items()}
            nbytes = {
                n: sum(w.nbytes for m, w in zip(names, wn, strict=True) if m == n) for n in best
            }
            nbytes["all"] = total
            cells = [f"{n} {nbytes[n] / best[n] / 1e9:.1f}" for n in best]
            print(f"{t} thread(s), GB/s: " + ", ".join(cells) + f" ({best['all'] * 1e3:.1f} ms)")
    finally:
        ops.set_num_threads(previous)
    del packs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--isa", default=None, help="scalar, avx2, avx512 or avx512bf16")
    ap.add_argument("--quick", action="store_true", help="fewer shapes")
    ap.add_argument(
        "--canonical", action="store_true", help="only the canonical GEMM vs oneDNN table"
    )
    ap.add_argument(
        "--gemv",
        action="store_true",
        help="only decode's GEMV over pre-packed weights (GB/s, 1 and 2 threads)",
    )
    ap.add_argument(
        "--dtypes", default="bfloat16,float32", help="--gemv: bfloat16, float32, q8_0, q4_0, q4_1"
    )
    ap.add_argument("--threads", default="1,2", help="--gemv: thread counts")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    if args.isa:
        ops.set_isa(args.isa)
    if args.gemv:
        for dtype in args.dtypes.split(","):
            bench_gemv_packed(dtype, [int(t) for t in args.threads.split(",")], args.reps)
        return
    if args.canonical:
        for dtype in ("bfloat16", "float32"):
            bench_canonical(dtype, [1, 16, 128, 1024], args.reps)
        return
    torch.set_num_threads(torch.get_num_threads())
    rows = f"{ops.gemv_max_rows('bfloat16')}/{ops.gemv_max_rows('float32')}"
    print(
        f"fastlm isa={ops.isa()} gemv_max_rows(bf16/f32)={rows} "
        f"torch threads={torch.get_num_threads()}"
    )
    print(f"stream read bandwidth (torch sum): {stream_bandwidth():.1f} GB/s")
    for dtype in ("bfloat16", "float32"):
        bench_decode(dtype, [1, 2, 4] if args.quick else [1, 2, 3, 4, 6, 8])
    prefill = [1, 4, 8, 32, 128, 512]
    for dtype in ("bfloat16", "float32"):
        bench_shapes(dtype, [1, 128] if args.quick else prefill)


if __name__ == "__main__":
    main()
