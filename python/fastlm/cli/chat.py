"""`fastlm chat [MESSAGE...]`: chat with a model offline. With a message, one reply; without, a
conversation read from stdin, one user message per line (history kept; `exit` or EOF ends)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from fastlm.cli.common import generate_turns, generation_parser, load_llm, sampling_params
from fastlm.outputs import RequestOutput


def make_parser(prog: str) -> argparse.ArgumentParser:
    p = generation_parser(
        prog, __doc__, "message", "the user message (none: read turns from stdin)"
    )
    p.add_argument("--system-prompt", default=None, help="a system message before the first turn")
    return p


def main(argv: list[str] | None = None, prog: str = "fastlm chat") -> int:
    args = make_parser(prog).parse_args(argv)
    llm = load_llm(prog, args)
    params = sampling_params(args)
    messages: list[dict[str, Any]] = []
    if args.system_prompt:
        messages.append({"role": "system", "content": args.system_prompt})

    def respond(text: str) -> RequestOutput:
        messages.append({"role": "user", "content": text})
        out = llm.chat(messages, params, use_tqdm=False)[0]
        messages.append({"role": "assistant", "content": out.outputs[0].text})
        return out

    return generate_turns(args.message, respond)


if __name__ == "__main__":
    sys.exit(main())
