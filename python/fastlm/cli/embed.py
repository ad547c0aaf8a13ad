"""`fastlm embed [TEXT...]`: embed texts with a pooling model (BERT-style encoders, or a decoder
pooled as vLLM's `--runner pooling` does) and print the vectors as JSON: by default one document
shaped like OpenAI's embeddings response, or with `--format jsonl` one array per line. Without
texts, each line of stdin is one text."""

from __future__ import annotations

import argparse
import json
import sys

from fastlm.cli.common import add_model_args, load_llm


def make_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__)
    p.add_argument("text", nargs="*", help="texts to embed (none: one text per line of stdin)")
    p.add_argument("--format", choices=["json", "jsonl"], default="json", help="output format")
    p.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="L2-normalize the vectors (default: as the model's sentence-transformers config)",
    )
    p.add_argument(
        "--dimensions", type=int, default=None, help="keep the first N dimensions (Matryoshka)"
    )
    p.add_argument(
        "--truncate-prompt-tokens",
        type=int,
        default=None,
        help="keep the last N tokens of each text (-1: the model's maximum length)",
    )
    add_model_args(p)
    return p


def main(argv: list[str] | None = None, prog: str = "fastlm embed") -> int:
    args = make_parser(prog).parse_args(argv)
    texts = list(args.text) or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        print(f"{prog}: no texts to embed (pass them as arguments or on stdin)", file=sys.stderr)
        return 2
    from fastlm.pooling import PoolingParams

    llm = load_llm(prog, args, runner="pooling", convert="embed")
    params = PoolingParams(
        truncate_prompt_tokens=args.truncate_prompt_tokens,
        dimensions=args.dimensions,
        normalize=args.normalize,
    )
    try:
        outs = llm.embed(texts, pooling_params=params, use_tqdm=False)
    except ValueError as e:  # a request the model refuses (e.g. dimensions, too long a text)
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    if args.format == "jsonl":
        for out in outs:
            print(json.dumps(out.outputs.embedding))
        return 0
    doc = {
        "object": "list",
        "model": args.model or llm.runtime.files.path,
        "data": [
            {"object": "embedding", "index": i, "embedding": out.outputs.embedding}
            for i, out in enumerate(outs)
        ],
        "usage": {"prompt_tokens": sum(len(out.prompt_token_ids) for out in outs)},
    }
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
