"""fastlm's paged attention against torch's scaled_dot_product_attention on SmolLM2-135M shapes.

Shapes (9 query heads, 3 KV heads, head_dim 64, block size 16): 1024- and 4096-token prefills
(--long adds 8192), a decode
step of 32 sequences x 256 context, one decode of a 384-token context over 30 layers (the
model's decode step in fastlm_bench) and one of a 2048-token context. Decode is memory
bound, so several distinct caches (one per "layer") are cycled to keep the KV out of L3, as in
the real model; it reports the KV read rate. torch gets contiguous, unpaged K/V (no gather) with
enable_gqa. Every case is timed `--repeat` times; medians are printed, because other processes
share the cores. Run with the dev build on PYTHONPATH:
    PYTHONPATH=python:build-attn/pypath python bench/ops_attention.py [--isa avx2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from fastlm import _core

ops = _core.ops

HQ, HK, D, BS = 9, 3, 64, 16
SCALE = D**-0.5


def timeit(fn: Callable[[], object], min_time: float) -> float:
    fn()
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed > min_time:
            return elapsed / n


def median_time(fn: Callable[[], object], repeat: int, min_time: float) -> float:
    return statistics.median(timeit(fn, min_time) for _ in range(repeat))


class Case:
    """`layers` independent paged caches holding `ctx_lens` sequences, plus torch's copies."""

    def __init__(self, q_lens: list[int], ctx_lens: list[int], dtype: str, layers: int) -> None:
        g = torch.Generator().manual_seed(0)
        rng = np.random.default_rng(0)
        self.dtype = dtype
        blocks = [(c + BS - 1) // BS for c in ctx_lens]
        num_blocks = sum(blocks)
        self.tables = np.zeros((len(ctx_lens), max(blocks)), np.int32)
        perm = rng.permutation(num_blocks).astype(np.int32)  # scattered blocks, as in serving
        used = 0
        for s, nb in enumerate(blocks):
            self.tables[s, :nb] = perm[used : used + nb]
            used += nb
        self.qsl = np.array([0, *np.cumsum(q_lens)], np.int32)
        self.seq_lens = np.array(ctx_lens, np.int32)
        self.q = torch.randn(int(self.qsl[-1]), HQ * D, generator=g)
        self.q_np = self.q.numpy()
        tdt = torch.bfloat16 if dtype == "bfloat16" else torch.float32
        self.caches: list[tuple[np.ndarray, np.ndarray]] = []
        self.torch_kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        for _ in range(layers):
            kc = torch.randn(num_blocks, BS, HK, D, generator=g).to(tdt)
            vc = torch.randn(num_blocks, BS, HK, D, generator=g).to(tdt)
            if dtype == "bfloat16":
                self.caches.append(
                    (
                        kc.view(torch.int16).numpy().view(np.uint16),
                        vc.view(torch.int16).numpy().view(np.uint16),
                    )
                )
            else:
                self.caches.append((kc.numpy(), vc.numpy()))
            # torch: one [B, HK, ctx, D] tensor per sequence length group (all equal here).
            ks, vs = [], []
            for s, ctx in enumerate(ctx_lens):
                rows = [int(self.tables[s][p // BS]) * BS + p % BS for p in range(ctx)]
                ks.append(kc.reshape(-1, HK, D)[rows].transpose(0, 1))
                vs.append(vc.reshape(-1, HK, D)[rows].transpose(0, 1))
            self.torch_kv.append((torch.stack(ks).contiguous(), torch.stack(vs).contiguous()))
        self.kv_bytes = sum(2 * c * HK * D * (2 if dtype == "bfloat16" else 4) for c in ctx_lens)
        b, n = len(q_lens), q_lens[0]
        self.tq = self.q.view(b, n, HQ, D).transpose(1, 2).to(tdt).contiguous()
        self.causal = n > 1

    def run_fastlm(self) -> None:
        for kc, vc in self.caches:
            ops.paged_attention(
                self.q_np, kc, vc, self.dtype, self.qsl, self.seq_lens, self.tables,
                HQ, HK, D, SCALE, 0,
            )  # fmt: skip

    def run_torch(self) -> None:
        for k, v in self.torch_kv:
            F.scaled_dot_product_attention(
                self.tq, k, v, is_causal=self.causal, scale=SCALE, enable_gqa=True
            )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--isa", default=None, help="scalar, avx2, avx512 or avx512bf16")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.3)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--long", action="store_true", help="add an 8192-token prefill")
    ap.add_argument("--only", default=None, help="run only cases whose name contains this")
    args = ap.parse_args()
    if args.isa:
        ops.set_isa(args.isa)
    print(f"fastlm isa={ops.isa()} torch threads={torch.get_num_threads()} repeat={args.repeat}")
    cases = [
        ("prefill 1x1024", [1024], [1024], 2),
        ("prefill 1x4096", [4096], [4096], 1),
        *([("prefill 1x8192", [8192], [8192], 1)] if args.long else []),
        ("decode 32x256", [1] * 32, [256] * 32, 8),
        ("decode 1x192", [1], [192], 30),  # bench_cpu_peers' decode: 128 + 128 tokens, mid-way
        ("decode 1x384", [1], [384], 30),  # fastlm_bench's decode: 128 + 256 tokens, 30 layers
        ("decode 1x2048", [1], [2048], 8),
    ]
    for dtype in args.dtypes.split(","):
        print(f"\n== {dtype} cache ==")
        for name, q_lens, ctx_lens, layers in cases:
            if args.only and args.only not in name:
                continue
            case = Case(q_lens, ctx_lens, dtype, layers)
            tf = median_time(case.run_fastlm, args.repeat, args.min_time) / layers
            line = (
                f"{name:15s}: fastlm {tf * 1e3:8.3f} ms/layer {case.kv_bytes / tf / 1e9:6.1f} GB/s"
            )
            if not args.no_torch:
                tt = median_time(case.run_torch, args.repeat, args.min_time) / layers
                line += f" | torch sdpa {tt * 1e3:8.3f} ms/layer | speedup {tt / tf:5.2f}x"
            print(line, flush=True)


if __name__ == "__main__":
    main()
