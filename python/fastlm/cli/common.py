"""Options shared by the offline commands (chat, complete, embed, bench) and their engine."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastlm.llm import LLM
    from fastlm.outputs import RequestOutput
    from fastlm.sampling_params import SamplingParams


# vLLM's --dtype spellings -> fastlm's names.
_DTYPE_ALIASES = {"half": "float16", "float": "float32"}


def _dtype(text: str) -> str:
    return _DTYPE_ALIASES.get(text, text)


def add_dtype_arg(g: argparse._ActionsContainer) -> None:
    g.add_argument(
        "--dtype",
        default="auto",
        type=_dtype,
        choices=["auto", "bfloat16", "float16", "float32"],
        help="compute dtype (half = float16, float = float32); 'auto' follows the checkpoint, "
        "but computes a float32 checkpoint in bfloat16 (like vLLM) when the CPU has AVX512_BF16",
    )


def add_quantization_arg(g: argparse._ActionsContainer) -> None:
    g.add_argument(
        "--quantization",
        "-q",
        default=None,
        choices=["gguf", "none", "q8_0", "q4_0", "q4_1"],
        help="weights: GGUF files keep their quantized blocks by default and run integer "
        "kernels on them ('gguf'); 'none' dequantizes them at load (the bfloat16 path); "
        "'q8_0' / 'q4_0' / 'q4_1' quantize a float checkpoint at load (embeddings and lm_head "
        "to q8_0; q4_1 stores a minimum per block as well as a scale: 20 bytes a block against "
        "q4_0's 18, for less error on weights not centred on zero)",
    )


def add_prefix_caching_arg(g: argparse._ActionsContainer) -> None:
    g.add_argument(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="reuse the KV cache of shared prompt prefixes",
    )


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default=None,
        help="a Hugging Face folder, a .gguf file or a cached hub id "
        "(default: SmolLM2-135M-Instruct, fetched once into fastlm's cache)",
    )
    add_dtype_arg(g)
    add_quantization_arg(g)
    g.add_argument(
        "--max-model-len", type=int, default=None, help="context length (default: the model's)"
    )
    g.add_argument("--seed", type=int, default=None, help="sampling seed")


def add_sampling_args(p: argparse.ArgumentParser, max_tokens: int = 128) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-tokens", type=int, default=max_tokens, help="tokens to generate at most")
    g.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0, help="0: off")


def generation_parser(prog: str, description: str, text: str, help: str) -> argparse.ArgumentParser:
    """chat's and complete's parser: the text as positional words, model and sampling flags."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument(text, nargs="*", help=help)
    add_model_args(p)
    add_sampling_args(p)
    return p


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    from fastlm.sampling_params import SamplingParams

    return SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        max_tokens=args.max_tokens,
    )


def load_llm(prog: str, args: argparse.Namespace, **engine: Any) -> LLM:
    """The engine for `args`; a model that cannot be found or fetched ends the command."""
    from fastlm.llm import LLM
    from fastlm.model_files import ModelNotFoundError

    try:
        return LLM(
            args.model,
            dtype=args.dtype,
            max_model_len=args.max_model_len,
            quantization=args.quantization,
            **engine,
        )
    except ModelNotFoundError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def read_line(prompt: str) -> str | None:
    """One line of stdin (after `prompt` on a terminal), without its newline; None at the end."""
    if sys.stdin.isatty():
        try:
            return input(prompt)
        except EOFError:
            return None
    line = sys.stdin.readline()
    return line.rstrip("\n") if line else None


def generate_turns(texts: list[str], respond: Callable[[str], RequestOutput]) -> int:
    """Answers `texts` joined as one input, or, when empty, each line of stdin until EOF or
    `exit`: the reply on stdout, token counts and time on stderr."""
    one_shot = bool(texts)
    while True:
        text = " ".join(texts) if one_shot else read_line("> ")
        if text is None or (not one_shot and text.strip() in ("exit", "quit")):
            return 0
        if text.strip():
            start = time.perf_counter()
            out = respond(text)
            seconds = time.perf_counter() - start
            completion = out.outputs[0]
            print(completion.text, flush=True)
            print(
                f"[{len(out.prompt_token_ids)} prompt + {len(completion.token_ids)} generated "
                f"tokens in {seconds:.2f}s, finish_reason={completion.finish_reason}]",
                file=sys.stderr,
                flush=True,
            )
        if one_shot:
            return 0
