"""`fastlm`: offline generation from the command line (the server is `fastlm-server`)."""

from __future__ import annotations

import argparse
import sys
import time

from fastlm.llm import LLM
from fastlm.sampling_params import SamplingParams


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastlm", description="Generate text with fastlm's engine, offline."
    )
    p.add_argument("mode", choices=["chat", "generate"], help="chat: apply the chat template")
    p.add_argument("text", nargs="+", help="the message (chat) or prompt (generate)")
    p.add_argument(
        "--model",
        default=None,
        help="HF folder, .gguf file or cached hub id (default: the embedded SmolLM2-135M-Instruct)",
    )
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "bfloat16", "float16", "float32"],
        help="compute dtype; 'auto' follows the checkpoint, but computes a float32 checkpoint "
        "in bfloat16 (like vLLM) when the CPU has AVX512_BF16",
    )
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-model-len", type=int, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    llm = LLM(args.model, dtype=args.dtype, max_model_len=args.max_model_len)
    params = SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        max_tokens=args.max_tokens,
    )
    text = " ".join(args.text)
    start = time.perf_counter()
    if args.mode == "chat":
        out = llm.chat([{"role": "user", "content": text}], params, use_tqdm=False)[0]
    else:
        out = llm.generate(text, params, use_tqdm=False)[0]
    elapsed = time.perf_counter() - start
    completion = out.outputs[0]
    print(completion.text)
    print(
        f"[{len(out.prompt_token_ids)} prompt + {len(completion.token_ids)} generated tokens in "
        f"{elapsed:.2f}s, finish_reason={completion.finish_reason}]",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
