"""Kernel-level GPU benchmark (run by device_check.sh on the GPU machine).

Ceilings are measured in the same run: the device-to-device copy rate (bytes read + written per
second, torch's copy_) and torch.matmul's bf16 rate on the same shapes. Reports:
  - RMSNorm and add+RMSNorm: bytes moved / time, as a fraction of the copy rate;
  - attention decode (split-KV): KV bytes read / time, as a fraction of the copy rate;
  - attention prefill (tensor-core tiles): causal FLOP/s next to torch's SDPA on the same shape;
  - cuBLASLt bf16 GEMM TFLOP/s next to torch.matmul's;
  - sampling (top-k + top-p, 128k vocabulary) time per batch.
Each figure is the median of timed repeats after warm-ups (CUDA events).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "gpu"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from capi import Capi, dt  # noqa: E402
from summary import format_bench_row  # noqa: E402

DEV = "cuda"
BF16 = torch.bfloat16


def time_ms(fn: Callable[[], None], warmup: int = 3, reps: int = 10) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def copy_rate() -> float:
    src = torch.empty(1 << 30, dtype=torch.uint8, device=DEV)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src))
    return 2 * src.numel() / (ms * 1e-3)  # bytes read + written per second


def bandwidth_row(name: str, ms: float, nbytes: int, rate: float) -> dict:
    return dict(name=name, ms=ms, bytes=nbytes, fraction_of_copy=nbytes / (ms * 1e-3) / rate)


def bench_norms(capi: Capi, rate: float) -> list[dict]:
    rows, hidden = 16384, 8192
    x = torch.randn(rows, hidden, device=DEV, dtype=BF16)
    res = torch.randn_like(x)
    w = torch.randn(hidden, device=DEV, dtype=BF16)
    y = torch.empty_like(x)
    ms = time_ms(lambda: capi("rms_norm", dt(BF16), x, hidden, w, 1e-6, y, rows, hidden))
    ms_add = time_ms(lambda: capi("add_rms_norm", dt(BF16), res, x, w, 1e-6, y, rows, hidden))
    # rms_norm reads x and writes y; add_rms_norm reads residual and x, writes residual and y.
    return [
        bandwidth_row("rms_norm bf16 16384x8192", ms, 2 * x.numel() * 2, rate),
        bandwidth_row("add_rms_norm bf16 16384x8192", ms_add, 4 * x.numel() * 2, rate),
    ]


def paged_setup(seqs: int, seq_len: int, nkv: int, hd: int, bs: int = 16):
    blocks_per = math.ceil(seq_len / bs)
    kc = torch.randn(seqs * blocks_per, bs, nkv, hd, device=DEV, dtype=BF16)
    vc = torch.randn_like(kc)
    tables = torch.randperm(seqs * blocks_per, device=DEV).to(torch.int32).reshape(seqs, -1)
    return kc, vc, tables


def bench_decode_one(capi: Capi, rate: float, seqs: int, seq_len: int) -> dict:
    nq, nkv, hd, bs = 32, 8, 128, 16  # Llama-3-8B attention
    kc, vc, tables = paged_setup(seqs, seq_len, nkv, hd, bs)
    q = torch.randn(seqs, nq * hd, device=DEV, dtype=BF16)
    o = torch.empty_like(q)
    qsl = torch.arange(seqs + 1, device=DEV, dtype=torch.int32)
    lens = torch.full((seqs,), seq_len, device=DEV, dtype=torch.int32)
    ws = capi.workspace(seqs, nq, hd, seq_len)

    def run() -> None:
        capi.attention(
            BF16, 1, q, o, num_q_heads=nq, num_kv_heads=nkv, head_dim=hd, query_start_loc=qsl,
            max_query_len=1, max_seq_len=seq_len, scale=1 / math.sqrt(hd), seq_lens=lens,
            k_cache=kc, v_cache=vc, block_tables=tables, block_size=bs, workspace=ws,
        )  # fmt: skip

    ms = time_ms(run)
    name = f"decode split-KV bf16 {seqs}x{seq_len} GQA 32/8 d128"
    return bandwidth_row(name, ms, 2 * seqs * seq_len * nkv * hd * 2, rate)  # K and V, bf16


def bench_decode(capi: Capi, rate: float) -> list[dict]:
    return [bench_decode_one(capi, rate, 64, 4096), bench_decode_one(capi, rate, 1, 32768)]


def bench_prefill(capi: Capi) -> list[dict]:
    nq, nkv, hd, bs, s = 32, 8, 128, 16, 4096
    kc, vc, tables = paged_setup(1, s, nkv, hd, bs)
    q = torch.randn(s, nq * hd, device=DEV, dtype=BF16)
    o = torch.empty_like(q)
    qsl = torch.tensor([0, s], device=DEV, dtype=torch.int32)
    lens = torch.tensor([s], device=DEV, dtype=torch.int32)

    def run() -> None:
        capi.attention(
            BF16, 2, q, o, num_q_heads=nq, num_kv_heads=nkv, head_dim=hd, query_start_loc=qsl,
            max_query_len=s, max_seq_len=s, scale=1 / math.sqrt(hd), seq_lens=lens, k_cache=kc,
            v_cache=vc, block_tables=tables, block_size=bs,
        )  # fmt: skip

    ms = time_ms(run)
    flops = 4 * nq * hd * s * s / 2  # QK^T and PV, causal half
    qt = q.reshape(1, s, nq, hd).transpose(1, 2)
    kt = torch.randn(1, nkv, s, hd, device=DEV, dtype=BF16)
    vt = torch.randn_like(kt)
    ms_t = time_ms(
        lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=True)
    )
    return [
        dict(
            name=f"prefill tiles bf16 {s} tokens GQA 32/8 d128",
            ms=ms,
            tflops=flops / (ms * 1e-3) / 1e12,
            torch_sdpa_ms=ms_t,
            torch_sdpa_tflops=flops / (ms_t * 1e-3) / 1e12,
        )
    ]


def bench_gemm_one(capi: Capi, m: int, n: int, k: int) -> dict:
    x = torch.randn(m, k, device=DEV, dtype=BF16)
    w = torch.randn(n, k, device=DEV, dtype=BF16)
    y = torch.empty(m, n, device=DEV, dtype=BF16)
    ms = time_ms(lambda: capi("gemm", dt(BF16), dt(BF16), x, w, None, y, m, n, k, 0))
    ms_t = time_ms(lambda: torch.matmul(x, w.T))
    flops = 2 * m * n * k
    return dict(
        name=f"gemm bf16 {m}x{n}x{k}",
        ms=ms,
        tflops=flops / (ms * 1e-3) / 1e12,
        torch_ms=ms_t,
        torch_tflops=flops / (ms_t * 1e-3) / 1e12,
    )


def bench_gemm(capi: Capi) -> list[dict]:
    shapes = [(8192, 8192, 8192), (4096, 14336, 4096), (2048, 4096, 4096), (1, 4096, 4096)]
    return [bench_gemm_one(capi, *s) for s in shapes]


def bench_sampling(capi: Capi) -> list[dict]:
    b, v = 256, 128256
    logits = torch.randn(b, v, device=DEV)
    f = torch.full((b,), 0.8, device=DEV)
    k = torch.full((b,), 50, device=DEV, dtype=torch.int32)
    # uint64 built on the host (not every CUDA kernel of torch takes uint64), then copied.
    seeds = torch.arange(b).to(torch.uint64).to(DEV)
    offs = torch.zeros(b, dtype=torch.uint64).to(DEV)
    ids = torch.empty(b, device=DEV, dtype=torch.int32)
    ms = time_ms(lambda: capi("sample", logits, b, v, f, k, f, None, seeds, offs, ids))
    ms_g = time_ms(lambda: capi("sample", logits, b, v, None, None, None, None, None, None, ids))
    return [
        dict(name=f"sample top-k 50 + top-p 0.8, {b}x{v}", ms=ms),
        dict(name=f"sample greedy, {b}x{v}", ms=ms_g),
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    capi = Capi()
    rate = copy_rate()
    results: dict = {"device": torch.cuda.get_device_name(), "copy_bytes_per_s": rate}
    rows = bench_norms(capi, rate) + bench_decode(capi, rate) + bench_prefill(capi)
    if capi.lib.fl_has_gemm():
        rows += bench_gemm(capi)
    rows += bench_sampling(capi)
    results["rows"] = rows
    print(f"device-to-device copy: {rate / 1e12:.2f} TB/s (read + write)")
    for r in rows:
        print(format_bench_row(r))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
