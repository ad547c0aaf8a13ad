"""`fastlm serve [MODEL] [flags]` (alias `fastlm-server`): the OpenAI-compatible HTTP server.

Flag names and defaults follow `vllm serve` wherever vLLM has the flag.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

# The server's event loop shares the cores with the engine's OpenMP workers: workers that spin
# long at barriers fight it for the CPU (HTTP at 63% of the engine's throughput with libgomp's
# default spinning, 8 streams on 2 cores). A short spin keeps most of the barrier latency win:
# on a quiet 2-core box, 1 stream decodes at 51 tok/s with GOMP_SPINCOUNT=1000 vs 45 with
# OMP_WAIT_POLICY=PASSIVE, and 32 streams at 374 vs 351 tok/s (bench/serving.py). Set before
# the runtime loads OpenMP; explicit settings win.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")

from fastlm.cli.common import (  # noqa: E402
    add_dtype_arg,
    add_prefix_caching_arg,
    add_quantization_arg,
)
from fastlm.runtime import EngineArgs  # noqa: E402 - after OMP_WAIT_POLICY
from fastlm.server.serving import ServerConfig


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _size(text: str) -> int:
    """Bytes, with an optional K/M/G/T suffix (powers of 1024)."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 512M, 2G)") from None


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" once: not where the help already says its default, nor for
    flags whose default is "unset"."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def make_parser(prog: str = "fastlm-server") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Serve a language model over an OpenAI-compatible HTTP API "
        "(/v1/completions, /v1/chat/completions, /v1/models, /tokenize, /detokenize, "
        "/metrics, /health).",
        formatter_class=_HelpFormatter,
    )
    p.add_argument(
        "model",
        nargs="?",
        default=None,
        help="a local Hugging Face model folder, a .gguf file or a hub id (downloaded into the "
        "Hugging Face cache unless offline); none: SmolLM2-135M-Instruct (GGUF), fetched once "
        "into fastlm's cache",
    )
    g = p.add_argument_group("HTTP")
    g.add_argument("--host", default=None, help="address to listen on (default: all, 0.0.0.0)")
    g.add_argument("--port", type=int, default=8000, help="port to listen on")
    g.add_argument(
        "--api-key",
        action="append",
        default=None,
        help="require `Authorization: Bearer <key>` on /v1 routes; may repeat; "
        "also read from FASTLM_API_KEY",
    )
    g.add_argument(
        "--root-path", default=None, help="path prefix when served behind a path-based proxy"
    )
    g.add_argument(
        "--allowed-origins", type=json.loads, default=["*"], help="CORS allowed origins (JSON list)"
    )
    g.add_argument(
        "--allowed-methods", type=json.loads, default=["*"], help="CORS allowed methods (JSON list)"
    )
    g.add_argument(
        "--allowed-headers", type=json.loads, default=["*"], help="CORS allowed headers (JSON list)"
    )
    g.add_argument("--allow-credentials", action="store_true", help="CORS: allow credentials")
    g.add_argument("--ssl-keyfile", default=None, help="TLS private key file")
    g.add_argument("--ssl-certfile", default=None, help="TLS certificate file")
    g.add_argument(
        "--uvicorn-log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug", "trace"],
        help="uvicorn's log level",
    )
    g.add_argument(
        "--enable-request-id-headers",
        action="store_true",
        help="echo X-Request-Id (or a fresh id) in every response's headers",
    )
    g.add_argument("--disable-log-requests", action="store_true", help="do not log each request")
    g.add_argument(
        "--max-log-len",
        type=int,
        default=None,
        help="characters of prompts kept in request logs (default: unlimited)",
    )
    g.add_argument(
        "--max-request-body-size",
        type=_size,
        default=16 * 2**20,
        help="largest accepted request body in bytes (fastlm's own)",
    )
    g.add_argument(
        "--max-audio-file-size",
        type=_size,
        default=25 * 2**20,
        help="largest accepted audio upload in bytes for /v1/audio/* (OpenAI's limit: 25 MB); "
        "larger uploads get a 413",
    )

    g.add_argument(
        "--max-n", type=int, default=128, help="largest n (choices per request) accepted"
    )
    g.add_argument(
        "--max-tokens-limit",
        type=int,
        default=None,
        help="largest max_tokens / max_completion_tokens accepted, and the cap when a request "
        "leaves it unset (default: only max_model_len bounds it)",
    )
    g.add_argument(
        "--max-stop-strings", type=int, default=64, help="most stop strings in one request"
    )
    g.add_argument(
        "--max-logit-bias", type=int, default=1024, help="most logit_bias entries in one request"
    )
    g.add_argument(
        "--max-waiting-requests",
        type=int,
        default=None,
        help="waiting-queue limit: with this many requests waiting, new generation and pooling "
        "requests get 503 with Retry-After (default: unbounded)",
    )
    g.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="on SIGTERM/SIGINT: seconds in-flight requests get to finish before the rest are "
        "aborted",
    )

    m = p.add_argument_group("model")
    m.add_argument(
        "--model",
        dest="model_flag",
        default=None,
        help="the model, as the MODEL argument (vLLM's spelling; give one of the two)",
    )
    m.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="accepted for vLLM compatibility: fastlm runs no model code from the hub, so a "
        "model that needs its own code fails to load with an error naming its class",
    )
    m.add_argument(
        "--served-model-name",
        nargs="+",
        default=None,
        help="model name(s) accepted in requests; the first is reported "
        "(default: the MODEL argument)",
    )
    add_dtype_arg(m)
    add_quantization_arg(m)
    m.add_argument(
        "--max-model-len", type=int, default=None, help="context length (default: the model's)"
    )
    m.add_argument("--seed", type=int, default=0, help="engine random seed")
    m.add_argument(
        "--generation-config",
        default="auto",
        help="'auto': sampling defaults from the model's generation_config.json; "
        "'vllm': none; or a folder holding a generation_config.json",
    )
    m.add_argument(
        "--override-generation-config",
        type=_json_object,
        default=None,
        help="JSON object overriding sampling defaults; generation_config.json's keys "
        "(temperature, top_p, top_k, min_p, repetition_penalty, max_new_tokens), e.g. "
        '{"temperature": 0.5}',
    )
    m.add_argument(
        "--logprobs-mode",
        default="raw_logprobs",
        choices=["raw_logprobs", "processed_logprobs", "raw_logits", "processed_logits"],
        help="what sampled-token logprobs report: log-probabilities (or logits) of the raw "
        "model output, or after bias, penalties, temperature and top-k/top-p/min-p",
    )
    m.add_argument(
        "--max-logprobs",
        type=int,
        default=20,
        help="largest logprobs / top_logprobs a request may ask for",
    )
    m.add_argument(
        "--chat-template",
        default=None,
        help="a chat template file, or the template itself (default: the model's)",
    )
    m.add_argument(
        "--chat-template-content-format",
        default="auto",
        choices=["auto", "string", "openai"],
        help="message content given to the template as a string or as OpenAI's "
        "list of parts; auto: detected from the template",
    )

    m.add_argument(
        "--runner",
        default="auto",
        choices=["auto", "generate", "pooling"],
        help="generate text, or pool (embeddings, classification, scores); auto: from the "
        "model's architecture",
    )
    m.add_argument(
        "--convert",
        default="auto",
        choices=["auto", "embed", "classify"],
        help="what a pooling model serves: embeddings or classification; auto: from the model",
    )

    so = p.add_argument_group("structured outputs")
    so.add_argument(
        "--structured-outputs-config",
        type=_json_object,
        default=None,
        help='JSON object, vLLM\'s: {"backend": "auto" | "guidance" | "llguidance" | "xgrammar", '
        '"disable_any_whitespace": bool, "disable_additional_properties": bool, '
        '"enable_in_reasoning": bool} (auto: llguidance; xgrammar when installed and '
        "asked for; other backends are refused). With --reasoning-parser the grammar applies "
        "after the reasoning block unless enable_in_reasoning",
    )

    tc = p.add_argument_group("tools and reasoning")
    tc.add_argument(
        "--enable-auto-tool-choice",
        action="store_true",
        help='tool_choice "auto": the model decides, --tool-call-parser finds its calls',
    )
    tc.add_argument(
        "--tool-call-parser",
        default=None,
        help="the model family's tool-call format: hermes, llama3_json, mistral, pythonic, "
        "qwen3_xml, qwen3_coder, or one a --tool-parser-plugin registers",
    )
    tc.add_argument(
        "--tool-parser-plugin",
        default=None,
        help="a Python file run at start-up; it may register parsers with "
        "fastlm.tool_parsers.register_tool_parser(name)",
    )
    tc.add_argument(
        "--reasoning-parser",
        default=None,
        help="reasoning models: deepseek_r1 or qwen3 (think tags); the reasoning goes to "
        "the message's reasoning_content",
    )

    e = p.add_argument_group("engine")
    e.add_argument("--max-num-seqs", type=int, default=256, help="most sequences in one batch")
    e.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=None,
        help="token budget of one engine step (default: chosen by the engine)",
    )
    e.add_argument("--block-size", type=int, default=16, help="tokens per KV cache block")
    e.add_argument(
        "--kv-cache-memory",
        type=_size,
        default=None,
        help="bytes of KV cache, e.g. 2G (fastlm's own; default: sized by the engine)",
    )
    add_prefix_caching_arg(e)
    e.add_argument(
        "--batch-invariant",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a token's logits bitwise independent of prefix-cache hits, chunking and the rest "
        "of the batch (every linear runs one canonical GEMM; default on, or FASTLM_BATCH_INVARIANT)"
        "; --no-batch-invariant lets large matmuls use oneDNN (faster prefill and embeddings)",
    )
    e.add_argument(
        "--prefix-caching-hash-algo",
        default="sha256",
        choices=["sha256"],
        help="hash of prefix-cache blocks: SHA-256 over (parent hash, token ids, extra keys "
        "incl. cache_salt), as vLLM; vLLM's sha256_cbor is not implemented",
    )
    e.add_argument(
        "--scheduling-policy",
        default="fcfs",
        choices=["fcfs", "priority"],
        help="fcfs: first come first served; priority: by the request's priority",
    )
    return p


def read_chat_template(value: str | None) -> str | None:
    if value is None:
        return None
    path = Path(value)
    try:
        if path.is_file():
            return path.read_text(encoding="utf-8")
    except OSError:
        pass
    if any(c in value for c in "{}"):
        return value  # the template itself
    raise SystemExit(f"fastlm-server: --chat-template {value!r} is neither a file nor a template")


def engine_args(args: argparse.Namespace) -> EngineArgs:
    return EngineArgs(
        model=args.model,
        dtype=args.dtype,
        seed=args.seed,
        max_model_len=args.max_model_len,
        block_size=args.block_size,
        kv_cache_memory=args.kv_cache_memory,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        enable_prefix_caching=args.enable_prefix_caching,
        scheduling_policy=args.scheduling_policy,
        generation_config=args.generation_config,
        override_generation_config=args.override_generation_config,
        runner=args.runner,
        convert=args.convert,
        quantization=args.quantization,
        logprobs_mode=args.logprobs_mode,
        prefix_caching_hash_algo=args.prefix_caching_hash_algo,
        batch_invariant=args.batch_invariant,
        # Test hook, no flag: the engine fails after this many steps (tests of engine death).
        fault_after_steps=int(os.environ["FASTLM_TEST_FAULT_AFTER_STEPS"])
        if os.environ.get("FASTLM_TEST_FAULT_AFTER_STEPS")
        else None,
    )


def server_config(args: argparse.Namespace) -> ServerConfig:
    from fastlm.default_model import DEFAULT_MODEL_FILE
    from fastlm.model_files import resolve_model

    model_path = str(resolve_model(args.model).path)
    default_name = args.model or Path(DEFAULT_MODEL_FILE).stem
    keys = list(args.api_key or [])
    if not keys and os.environ.get("FASTLM_API_KEY"):
        keys = [os.environ["FASTLM_API_KEY"]]
    return ServerConfig(
        served_model_names=list(args.served_model_name or [default_name]),
        model_path=model_path,
        max_logprobs=args.max_logprobs,
        max_n=args.max_n,
        max_tokens_limit=args.max_tokens_limit,
        max_stop_strings=args.max_stop_strings,
        max_logit_bias=args.max_logit_bias,
        max_waiting_requests=args.max_waiting_requests,
        max_audio_file_size=args.max_audio_file_size,
        chat_template=read_chat_template(args.chat_template),
        chat_template_content_format=args.chat_template_content_format,
        enable_request_id_headers=args.enable_request_id_headers,
        disable_log_requests=args.disable_log_requests,
        max_log_len=args.max_log_len,
        api_keys=keys,
        enable_auto_tool_choice=args.enable_auto_tool_choice,
        tool_call_parser=args.tool_call_parser,
        tool_parser_plugin=args.tool_parser_plugin,
        reasoning_parser=args.reasoning_parser,
        structured_outputs_config=dict(args.structured_outputs_config or {}),
    )


def parse_args(argv: list[str] | None = None, prog: str = "fastlm-server") -> argparse.Namespace:
    parser = make_parser(prog)
    args = parser.parse_args(argv)
    if args.model_flag is not None:
        if args.model is not None and args.model != args.model_flag:
            parser.error(
                f"the model is given twice: {args.model!r} and --model {args.model_flag!r}"
            )
        args.model = args.model_flag
    if args.override_generation_config is not None:
        from fastlm.generation_config import check_override

        try:
            check_override(args.override_generation_config)
        except ValueError as e:
            parser.error(f"--override-generation-config: {e}")
    try:
        from fastlm.server.serving import ServerConfig, tool_config

        tool_config(
            ServerConfig(
                served_model_names=[],
                model_path="",
                enable_auto_tool_choice=args.enable_auto_tool_choice,
                tool_call_parser=args.tool_call_parser,
                tool_parser_plugin=args.tool_parser_plugin,
                reasoning_parser=args.reasoning_parser,
            )
        )
    except (ValueError, OSError) as e:
        parser.error(str(e))
    if args.structured_outputs_config is not None:
        from fastlm.structured_outputs import check_structured_outputs_config

        try:
            check_structured_outputs_config(args.structured_outputs_config)
        except ValueError as e:
            parser.error(f"--structured-outputs-config: {e}")
    return args


def main(argv: list[str] | None = None, prog: str = "fastlm-server") -> int:
    args = parse_args(argv, prog)
    import uvicorn

    from fastlm.model_files import ModelNotFoundError
    from fastlm.server.app import CorsOptions, build_app, with_root_path

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = server_config(args)
    except ModelNotFoundError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    failed: list[BaseException] = []
    dead: list[str] = []
    server: uvicorn.Server | None = None

    def on_load_failed(e: BaseException) -> None:
        failed.append(e)
        if server is not None:
            server.should_exit = True

    def on_engine_dead(error: str) -> None:
        # vLLM's engine-dead behaviour: live requests got their 500s; stop, exit non-zero.
        dead.append(error)
        if server is not None:
            server.should_exit = True

    app = build_app(
        config,
        engine_args=engine_args(args),
        cors=CorsOptions(
            args.allowed_origins, args.allowed_methods, args.allowed_headers, args.allow_credentials
        ),
        max_body_size=args.max_request_body_size,
        on_load_failed=on_load_failed,
        on_engine_dead=on_engine_dead,
    )
    host = args.host or "0.0.0.0"
    scheme = "https" if args.ssl_certfile else "http"
    print(
        f"fastlm-server: listening on {scheme}://{host}:{args.port}{args.root_path or ''} "
        f"(model {config.served_model_names[0]!r}: {config.model_path})",
        file=sys.stderr,
        flush=True,
    )
    uv_config = uvicorn.Config(
        with_root_path(app, args.root_path or ""),
        host=host,
        port=args.port,
        log_level=args.uvicorn_log_level,
        access_log=not args.disable_log_requests,
        root_path=args.root_path or "",
        ssl_keyfile=args.ssl_keyfile,
        ssl_certfile=args.ssl_certfile,
        timeout_keep_alive=5,
        # SIGTERM: stop accepting, let in-flight requests finish up to this long, then cancel
        # them (their engine requests are aborted and their blocks freed) and exit 0.
        timeout_graceful_shutdown=args.shutdown_timeout,
    )
    server = uvicorn.Server(uv_config)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the handler
    # that was installed before it: make that a normal exit.
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    print("fastlm-server: stopped", file=sys.stderr, flush=True)
    if failed:
        print(f"fastlm-server: the engine failed to load: {failed[0]}", file=sys.stderr)
        return 1
    if dead:
        print(f"fastlm-server: the engine failed: {dead[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
