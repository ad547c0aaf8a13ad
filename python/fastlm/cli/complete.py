"""`fastlm complete [PROMPT...]`: complete a prompt offline (no chat template). Without a
prompt, each line of stdin is completed in turn. `fastlm generate` is the same command."""

from __future__ import annotations

import sys

from fastlm.cli.common import generate_turns, generation_parser, load_llm, sampling_params


def main(argv: list[str] | None = None, prog: str = "fastlm complete") -> int:
    parser = generation_parser(
        prog, __doc__, "prompt", "the prompt (none: one prompt per line of stdin)"
    )
    args = parser.parse_args(argv)
    llm = load_llm(prog, args)
    params = sampling_params(args)
    return generate_turns(args.prompt, lambda text: llm.generate(text, params, use_tqdm=False)[0])


if __name__ == "__main__":
    sys.exit(main())
