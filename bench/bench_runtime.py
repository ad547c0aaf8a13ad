"""fastlm against Hugging Face transformers (torch CPU), same model and dtype, in one run.

Measures, for both:
  decode      single stream, 128-token prompt, 128 new tokens (greedy, no early stop):
              (new - 1) / (t(generate 128) - t(generate 1)), i.e. tokens/s after the first one
  prefill     one 1024-token prompt to its first token (fastlm: max_tokens=1, prefix caching
              off; transformers: generate with max_new_tokens=1, a single forward)
  throughput  32 prompts of 128 tokens, 128 new tokens each, generated tokens / wall time
              (fastlm: one LLM.generate call; transformers: one left-padded batch of 32)
and this machine's memory read bandwidth, for the decode roofline:
  bandwidth / (weight bytes + KV bytes read per decoded token).

Each side runs in its own subprocess, so the two OpenMP runtimes never share a process.
Run with the dev build on PYTHONPATH:
    PYTHONPATH=python:build/pypath python bench/bench_runtime.py [--dtype bfloat16] [--json-out F]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MARKER = "@@bench-result@@ "

# Targets from the issue: decode >= 2x transformers and >= 60% of roofline; throughput >= 5x.
TARGET_DECODE_RATIO = 2.0
TARGET_ROOFLINE_FRACTION = 0.6
TARGET_THROUGHPUT_RATIO = 5.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--model", default=None, help="a .gguf file or HF folder (default: SmolLM2-135M GGUF)"
    )
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--threads", type=int, default=2, help="torch threads for transformers")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--gen-len", type=int, default=128)
    p.add_argument("--prefill-len", type=int, default=1024)
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--repeat", type=int, default=3, help="prefill repeats (best is kept)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--membw-bytes", type=int, default=1 << 30)
    p.add_argument("--fastlm-bench", default=None, help="fastlm_bench binary for --mode membw")
    p.add_argument("--skip-hf", action="store_true", help="measure fastlm only")
    p.add_argument("--skip-fastlm", action="store_true", help="measure transformers only")
    p.add_argument("--json-out", default=None, help="also write all figures to this file")
    p.add_argument("--worker", choices=["fastlm", "hf"], default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.gen_len < 2:
        p.error("--gen-len must be at least 2 (decode rate is measured after the first token)")
    return args


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def resolve_model(model: str | None) -> str:
    if model:
        return model
    from fastlm.default_model import ensure_default_model

    return str(ensure_default_model())


def random_prompts(seed: int, count: int, length: int, vocab: int) -> list[list[int]]:
    """The same ids in both workers: a seeded generator, never the engines' own RNGs."""
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(length)] for _ in range(count)]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


# -- memory bandwidth -------------------------------------------------------------------------


def torch_read_bandwidth(nbytes: int, threads: int) -> float:
    """Bytes/s of a multi-threaded float32 sum (torch parallelizes reductions; numpy doesn't)."""
    import torch

    torch.set_num_threads(threads)
    a = torch.ones(nbytes // 4, dtype=torch.float32)
    a.sum()
    best = 0.0
    for _ in range(5):
        dt, _ = timed(lambda: a.sum())
        best = max(best, nbytes / dt)
    return best


def find_fastlm_bench(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    found = shutil.which("fastlm_bench")
    if found:
        return found
    candidates = sorted(REPO.glob("build*/fastlm_bench"), key=lambda p: p.stat().st_mtime)
    return str(candidates[-1]) if candidates else None


def measure_bandwidth(args: argparse.Namespace) -> dict[str, float]:
    """The honest peak: the best of torch's threaded sum and fastlm_bench's threaded read."""
    out = {"torch_sum_gbs": torch_read_bandwidth(args.membw_bytes, args.threads) / 1e9}
    binary = find_fastlm_bench(args.fastlm_bench)
    if binary:
        cmd = [binary, "--mode", "membw", "--membw-bytes", str(args.membw_bytes), "--json"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode == 0:
            out["fastlm_bench_gbs"] = float(json.loads(proc.stdout)["membw_gbs"])
        else:
            log(f"fastlm_bench --mode membw failed: {proc.stderr.strip()}")
    out["peak_gbs"] = max(out.values())
    return out


# -- workers ----------------------------------------------------------------------------------


def run_fastlm(args: argparse.Namespace, model: str) -> dict[str, Any]:
    from fastlm import LLM, SamplingParams

    max_len = max(args.prefill_len + 1, args.prompt_len + args.gen_len)
    block_size = 16
    load_s, llm = timed(
        lambda: LLM(
            model,
            dtype=args.dtype,
            enable_prefix_caching=False,
            max_model_len=max_len,
            block_size=block_size,
        )
    )
    engine = llm.engine
    vocab = int(engine.vocab_size)

    def gen(prompts: list[list[int]], max_tokens: int) -> tuple[float, list[list[int]]]:
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        dt, outs = timed(lambda: llm.generate(prompts, params, use_tqdm=False))
        tokens = [list(o.outputs[0].token_ids) for o in outs]
        got = sum(len(t) for t in tokens)
        assert got == len(prompts) * max_tokens, f"expected {len(prompts) * max_tokens}, got {got}"
        return dt, tokens

    return measure(args, gen, vocab) | {
        "load_s": load_s,
        "dtype": engine.dtype,
        "weight_bytes": int(engine.weight_bytes),
        # KV bytes per cached token, all layers, K and V.
        "kv_bytes_per_token": engine.kv_cache_bytes / (engine.num_blocks * block_size),
    }


Generate = Callable[[list[list[int]], int], tuple[float, list[list[int]]]]


def measure(
    args: argparse.Namespace,
    gen: Generate,
    vocab: int,
    after: Callable[[str], None] | None = None,
    bandwidth: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """The same sequence of calls for both sides: warm-up, decode, prefill, throughput.
    `after(phase)` runs after each phase (bench_cpu_peers.py --smaps: memory per phase).
    The decode runs `args.decode_rounds` times (default 1; tokens_per_s is their median) and
    `bandwidth()`, when given, reads the memory bandwidth before each and after the last, so
    the decode roofline comes from the same minutes as the decode (bench_cpu_peers.py)."""
    after = after or (lambda phase: None)
    gen(random_prompts(args.seed + 99, 1, 32, vocab), 8)  # warm-up
    res: dict[str, Any] = {}
    (prompt,) = random_prompts(args.seed, 1, args.prompt_len, vocab)
    t_first = min(gen([prompt], 1)[0] for _ in range(2))
    runs: list[float] = []
    membw: list[float] = []
    for _ in range(max(1, getattr(args, "decode_rounds", 1))):
        if bandwidth is not None:
            membw.append(bandwidth())
        t_all, tokens = gen([prompt], args.gen_len)
        runs.append((args.gen_len - 1) / (t_all - t_first))
    if bandwidth is not None:
        membw.append(bandwidth())
    res["decode_tokens"] = tokens[0]
    res["decode"] = {
        "t_first_token_s": t_first,
        "t_total_s": t_all,
        "tokens_per_s": statistics.median(runs),
        "runs_tokens_per_s": runs,
        "end_to_end_tokens_per_s": args.gen_len / t_all,
    } | ({"membw_gbs": membw} if membw else {})
    after("decode")
    if getattr(args, "decode_only", False):
        return res
    (long_prompt,) = random_prompts(args.seed + 1, 1, args.prefill_len, vocab)
    t = min(gen([long_prompt], 1)[0] for _ in range(args.repeat))
    res["prefill"] = {"ttft_s": t, "tokens_per_s": args.prefill_len / t}
    after("prefill")

    n = args.num_prompts
    t, _ = gen(random_prompts(args.seed + 2, n, args.prompt_len, vocab), args.gen_len)
    res["throughput"] = {
        "total_s": t,
        "tokens_per_s": n * args.gen_len / t,
        "total_tokens_per_s": n * (args.prompt_len + args.gen_len) / t,
    }
    after(f"batch-{n}")
    return res


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[Any, Any]:
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    return ids, mask


def load_hf(model: str, dtype: Any) -> Any:
    from transformers import AutoModelForCausalLM

    path = Path(model)
    if path.suffix != ".gguf":
        return AutoModelForCausalLM.from_pretrained(model, dtype=dtype)
    kwargs: dict[str, Any] = {}
    try:
        # transformers >= 5 keeps GGUF blocks packed and computes in float32 through its own
        # kernels; dequantize=True gives the plain dense model in `dtype`, the same weights
        # fastlm serves.
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older releases always dequantize at load
        pass
    return AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=dtype, **kwargs
    )


def run_hf(args: argparse.Namespace, model: str) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    load_s, hf = timed(lambda: load_hf(model, dtype))
    hf.eval()
    vocab = int(hf.config.vocab_size)
    pad_id = hf.generation_config.eos_token_id
    if isinstance(pad_id, list):
        pad_id = pad_id[0]
    pad_id = 0 if pad_id is None else int(pad_id)

    def gen(prompts: list[list[int]], new_tokens: int) -> tuple[float, list[list[int]]]:
        ids, mask = left_pad(prompts, pad_id)

        def call() -> Any:
            with torch.inference_mode():
                return hf.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    do_sample=False,
                    use_cache=True,
                    pad_token_id=pad_id,
                )

        dt, out = timed(call)
        assert out.shape == (len(prompts), ids.shape[1] + new_tokens), tuple(out.shape)
        return dt, out[:, ids.shape[1] :].tolist()

    return measure(args, gen, vocab) | {
        "load_s": load_s,
        "dtype": str(next(hf.parameters()).dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
        "attn_implementation": getattr(hf.config, "_attn_implementation", None),
    }


def spawn_worker(which: str, argv: list[str]) -> dict[str, Any]:
    """Runs one side in a fresh interpreter; its figures come back as one marked JSON line."""
    log(f"--- {which}: running ...")
    start = time.perf_counter()
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", which]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the {which} worker failed (exit {proc.returncode})")
    for line in proc.stdout.splitlines():
        if line.startswith(MARKER):
            res: dict[str, Any] = json.loads(line[len(MARKER) :])
            log(f"--- {which}: done in {time.perf_counter() - start:.0f} s")
            return res
    raise RuntimeError(f"the {which} worker printed no result")


# -- report -----------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def fmt(v: float | None, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def report(args: argparse.Namespace, res: dict[str, Any]) -> None:
    fl, hf, bw = res.get("fastlm"), res.get("hf"), res["bandwidth"]

    def get(side: dict[str, Any] | None, key: str) -> float | None:
        return side[key]["tokens_per_s"] if side else None

    decode = (get(fl, "decode"), get(hf, "decode"))
    prefill = (get(fl, "prefill"), get(hf, "prefill"))
    thr = (get(fl, "throughput"), get(hf, "throughput"))
    rows = [
        (
            f"decode tok/s (1 stream, {args.prompt_len}+{args.gen_len})",
            *decode,
            f">= {TARGET_DECODE_RATIO:g}x",
        ),
        (f"prefill tok/s ({args.prefill_len}-token prompt, TTFT)", *prefill, ""),
        (
            f"throughput tok/s ({args.num_prompts} x {args.prompt_len}+{args.gen_len})",
            *thr,
            f">= {TARGET_THROUGHPUT_RATIO:g}x",
        ),
    ]
    if hf:
        # transformers serving the same prompts one at a time: each takes the decode run's time.
        seq = args.gen_len / hf["decode"]["t_total_s"]
        rows.append(("  vs transformers 1 request at a time", thr[0], seq, ""))
    print()
    print(
        f"model {res['model']}, dtype {args.dtype}, {os.cpu_count()} CPUs, "
        f"load average before {res['loadavg'][0]:.2f}"
    )
    print(f"{'':44} {'fastlm':>10} {'transformers':>13} {'ratio':>8}  target")
    for name, a, b, target in rows:
        print(f"{name:44} {fmt(a):>10} {fmt(b):>13} {ratio(a, b):>8}  {target}")

    def ms(side: dict[str, Any] | None, key: str, field: str) -> float | None:
        return side[key][field] * 1e3 if side else None

    for name, key, field in (
        (f"time to first token ms ({args.prompt_len} tokens)", "decode", "t_first_token_s"),
        (f"time to first token ms ({args.prefill_len} tokens)", "prefill", "ttft_s"),
    ):
        a, b = ms(fl, key, field), ms(hf, key, field)
        print(f"{name:44} {fmt(a):>10} {fmt(b):>13} {ratio(b, a):>8}")
    print()
    srcs = ", ".join(f"{k} {v:.1f}" for k, v in bw.items() if k != "peak_gbs")
    print(f"memory read bandwidth: {bw['peak_gbs']:.1f} GB/s ({srcs})")
    if fl and "roofline" in res:
        rl = res["roofline"]
        print(
            f"decode bytes per token: {rl['bytes_per_token'] / 1e6:.1f} MB "
            f"(weights {fl['weight_bytes'] / 1e6:.1f} MB + KV {rl['kv_bytes'] / 1e6:.2f} MB)"
        )
        line = (
            f"decode roofline: {rl['tokens_per_s']:.1f} tok/s; fastlm "
            f"{100 * rl['fastlm_fraction']:.1f}% (target >= "
            f"{100 * TARGET_ROOFLINE_FRACTION:.0f}%)"
        )
        if hf:
            line += f"; transformers {100 * rl['hf_fraction']:.1f}%"
        print(line)
    if fl and hf:
        a, b = fl["decode_tokens"], hf["decode_tokens"]
        same = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), len(a))
        print(f"greedy decode agreement: first {same} of {len(a)} tokens identical")


def main(argv: list[str] | None = None) -> None:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw)
    model = resolve_model(args.model)
    if args.worker:
        run = run_fastlm if args.worker == "fastlm" else run_hf
        print(MARKER + json.dumps(run(args, model)), flush=True)
        return

    start = time.perf_counter()
    res: dict[str, Any] = {"model": model, "dtype": args.dtype, "loadavg": os.getloadavg()}
    log("--- memory bandwidth ...")
    res["bandwidth"] = measure_bandwidth(args)
    passthrough = [*raw, "--model", model]
    if not args.skip_fastlm:
        res["fastlm"] = spawn_worker("fastlm", passthrough)
    if not args.skip_hf:
        res["hf"] = spawn_worker("hf", passthrough)
    fl = res.get("fastlm")
    if fl:
        # Each decode step reads every weight and the KV of the context so far (its mean here).
        mean_ctx = args.prompt_len + (args.gen_len - 1) / 2
        kv = fl["kv_bytes_per_token"] * mean_ctx
        per_token = fl["weight_bytes"] + kv
        roof = res["bandwidth"]["peak_gbs"] * 1e9 / per_token
        res["roofline"] = {
            "bytes_per_token": per_token,
            "kv_bytes": kv,
            "tokens_per_s": roof,
            "fastlm_fraction": fl["decode"]["tokens_per_s"] / roof,
        }
        if res.get("hf"):
            res["roofline"]["hf_fraction"] = res["hf"]["decode"]["tokens_per_s"] / roof
    res["wall_s"] = time.perf_counter() - start
    report(args, res)
    print(f"\nwhole run: {res['wall_s']:.0f} s")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
