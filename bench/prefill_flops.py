"""The prefill FLOP count of a decoder and this machine's matmul rate (issue 12's "achieved
GFLOP/s over the whole prefill, as a fraction of the measured bf16 matmul rate").

FLOPs of one n-token prompt (multiply-adds count 2): every layer's linears for each token
(q, k, v, o, gate, up, down), the LM head for the last token only (time to first token), and
causal attention: query i sees i + 1 keys, QK^T and PV each 2 * head_dim FLOPs per (query head,
key), so 2 * layers * q_heads * head_dim * n * (n + 1). Norms, RoPE, softmax and SiLU are not
counted (a few FLOPs per element, not matmul work).

The matmul rate is measured on square n x n x n products, each route best of a few runs:
torch f32 and bf16 (oneDNN; on a CPU without AVX512-BF16/AMX torch's bf16 is emulated) and
fastlm's own linear with f32 and bf16 weights, through the canonical batch-invariant GEMM (the
default) and through oneDNN (batch invariance off; bf16 weights without native bf16 matmuls
are widened to f32 in slices). "bf16 rate" is the best bf16 route: on an AVX2-only CPU that is
fastlm's widening GEMM, i.e. f32 FMAs fed from bf16 weights.

    PYTHONPATH=python:build-dev/pypath python bench/prefill_flops.py [--model F.gguf] [--size 2048]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def model_shape(model: str) -> dict[str, int]:
    """Layer sizes of a .gguf file (its metadata) or a transformers folder (config.json)."""
    if model.endswith(".gguf"):
        from fastlm import _core

        arch = str(_core.gguf_metadata(model, "general.architecture")["general.architecture"])
        meta = _core.gguf_metadata(model, f"{arch}.")

        def get(key: str) -> int:
            return int(meta[f"{arch}.{key}"])

        hidden, heads = get("embedding_length"), get("attention.head_count")
        vocab = meta.get(f"{arch}.vocab_size")
        return {
            "layers": get("block_count"),
            "hidden": hidden,
            "intermediate": get("feed_forward_length"),
            "q_heads": heads,
            "kv_heads": int(meta.get(f"{arch}.attention.head_count_kv", heads)),
            "head_dim": int(meta.get(f"{arch}.attention.key_length", hidden // heads)),
            "vocab": int(vocab)
            if vocab is not None
            else len(_core.gguf_metadata(model, "tokenizer.ggml.tokens")["tokenizer.ggml.tokens"]),
        }
    cfg = json.loads((Path(model) / "config.json").read_text())
    heads = int(cfg["num_attention_heads"])
    return {
        "layers": int(cfg["num_hidden_layers"]),
        "hidden": int(cfg["hidden_size"]),
        "intermediate": int(cfg["intermediate_size"]),
        "q_heads": heads,
        "kv_heads": int(cfg.get("num_key_value_heads") or heads),
        "head_dim": int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads),
        "vocab": int(cfg["vocab_size"]),
    }


def prefill_flops(shape: dict[str, int], n: int) -> dict[str, float]:
    """FLOPs of an n-token prefill that produces the last token's logits."""
    h, i, d = shape["hidden"], shape["intermediate"], shape["head_dim"]
    q, kv = shape["q_heads"] * d, shape["kv_heads"] * d
    per_token = 2 * shape["layers"] * (h * (q + 2 * kv) + q * h + 2 * h * i + i * h)
    linear = float(per_token) * n + 2.0 * h * shape["vocab"]
    attention = 2.0 * shape["layers"] * shape["q_heads"] * d * n * (n + 1)
    return {"linear": linear, "attention": attention, "total": linear + attention}


def best_rate(fn: Callable[[], object], flops: float, min_time: float = 1.0) -> float:
    """GFLOP/s of the fastest call after a warm-up, calling for at least min_time seconds."""
    fn()
    best, spent = float("inf"), 0.0
    while spent < min_time or best == float("inf"):
        start = time.perf_counter()
        fn()
        dt = time.perf_counter() - start
        best, spent = min(best, dt), spent + dt
    return flops / best / 1e9


def matmul_rates(size: int, threads: int) -> dict[str, Any]:
    """GFLOP/s of a size^3 matmul by every route (see the module doc); torch bf16, when emulated
    (under 5 GFLOP/s at 256^3), is measured at 256^3 instead."""
    import numpy as np
    import torch
    from fastlm import _core

    ops = _core.ops
    torch.set_num_threads(threads)
    ops.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    rates: dict[str, float] = {}
    sizes: dict[str, int] = {}

    def torch_route(name: str, dtype: torch.dtype, probe: bool) -> None:
        # probe: an emulated dtype (torch bf16 without AVX512-BF16/AMX) would take minutes at
        # size^3, so time 256^3 first and stay there below 5 GFLOP/s.
        n = 256 if probe else size
        while True:
            a = torch.randn(n, n, generator=g).to(dtype)
            b = torch.randn(n, n, generator=g).to(dtype)
            r = best_rate(lambda a=a, b=b: torch.mm(a, b), 2.0 * n**3, 0.3 if n < size else 1.0)
            if n == size or r < 5.0:
                break
            n = size
        rates[name], sizes[name] = r, n

    torch_route("torch f32", torch.float32, probe=False)
    torch_route("torch bf16", torch.bfloat16, probe=True)
    x = torch.randn(size, size, generator=g).numpy()
    w32 = (torch.randn(size, size, generator=g) * 0.02).numpy()
    w16 = torch.from_numpy(w32).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    previous = ops.batch_invariant()
    try:
        for invariant, route in ((True, "canonical GEMM"), (False, "oneDNN")):
            ops.set_batch_invariant(invariant)
            for dtype, w in (("float32", w32), ("bfloat16", w16)):
                packed = ops.prepack_linear(w, dtype)  # as a model's weights are
                name = f"fastlm {'f32' if dtype == 'float32' else 'bf16'} ({route})"
                rates[name] = best_rate(
                    lambda w=w, dtype=dtype: ops.linear(x, w, dtype), 2.0 * size**3
                )
                sizes[name] = size
                del packed
    finally:
        ops.set_batch_invariant(previous)
    best_f32 = max(v for k, v in rates.items() if "f32" in k)
    bf16 = {k: v for k, v in rates.items() if "bf16" in k}
    best_bf16 = max(bf16, key=lambda k: bf16[k])
    return {
        "rates": rates,
        "sizes": sizes,
        "best_f32": best_f32,
        "best_bf16": bf16[best_bf16],
        "best_bf16_route": best_bf16,
        "isa": ops.detected_isa(),
        "threads": threads,
    }


def describe_rates(m: dict[str, Any]) -> str:
    top = max(m["sizes"].values())
    cells = [
        f"{k} {v:.1f}" + (f" (at {m['sizes'][k]}^3)" if m["sizes"][k] < top else "")
        for k, v in m["rates"].items()
    ]
    return f"matmul GFLOP/s, {m['threads']} threads, ISA {m['isa']}: " + ", ".join(cells)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=None, help="a .gguf file or transformers folder")
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lengths", default="1024,2048,4096,8192")
    args = ap.parse_args()
    if args.model:
        shape = model_shape(args.model)
        print(f"{args.model}: {shape}")
        for n in (int(x) for x in args.lengths.split(",")):
            f = prefill_flops(shape, n)
            print(
                f"  {n:6d} tokens: {f['total'] / 1e12:.3f} TFLOP "
                f"(linears {f['linear'] / 1e12:.3f}, attention {f['attention'] / 1e12:.3f})"
            )
    m = matmul_rates(args.size, args.threads)
    print(describe_rates(m))
    print(f"best f32 {m['best_f32']:.1f}, best bf16 {m['best_bf16']:.1f} ({m['best_bf16_route']})")


if __name__ == "__main__":
    main()
