"""`fastlm <command>`: the command line, mirroring vLLM's (`vllm serve`, `vllm chat`, ...).

Each command lives in its own module, imported only when it runs: `serve` must set OpenMP's wait
policy before anything loads the runtime (fastlm.server.cli), and `fastlm --help` stays instant.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module, one-line help). Each module has `main(argv, prog) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("fastlm.server.cli", "serve a model over an OpenAI-compatible HTTP API"),
    "chat": ("fastlm.cli.chat", "chat with a model offline (one message, or interactively)"),
    "complete": ("fastlm.cli.complete", "complete a prompt offline"),
    "embed": ("fastlm.cli.embed", "embed texts with a pooling model; prints JSON"),
    "bench": ("fastlm.cli.bench", "latency / throughput benchmarks (engine or running server)"),
    "download": ("fastlm.cli.download", "fetch the default model into the cache; prints its path"),
}
ALIASES = {"generate": "complete"}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: fastlm <command> [options]   (fastlm <command> --help for its options)",
        "",
        "commands:",
        *(f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items()),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        from fastlm import __version__

        print(__version__)
        return 0
    name = ALIASES.get(args[0], args[0])
    if name not in COMMANDS:
        print(f"fastlm: unknown command {args[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    code: int = module.main(args[1:], prog=f"fastlm {name}")
    return code
