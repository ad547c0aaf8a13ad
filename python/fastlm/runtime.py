"""The Python side of one engine: model files, tokenizer, the C++ engine and the output
processor, with the request-admission rules shared by the offline LLM and the async server
engine (n fan-out, truncation, bad words, max_tokens, generation-config defaults)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from fastlm import _core
from fastlm.generation_config import check_override, default_sampling_params, eos_token_ids
from fastlm.model_files import ModelFiles, resolve_model
from fastlm.output_processor import OutputProcessor, core_params_for_children
from fastlm.pooling import Pooler, apply_pooling_defaults
from fastlm.sampling_params import SamplingParams
from fastlm.structured_outputs import GrammarMatcher, Grammars, ReasoningGatedMatcher
from fastlm.tokenizer import Tokenizer, load_tokenizer

logger = logging.getLogger("fastlm")


QUANTIZATIONS = ("gguf", "none", "q8_0", "q4_0", "q4_1")
LOGPROBS_MODES = ("raw_logprobs", "processed_logprobs", "raw_logits", "processed_logits")


@dataclass
class EngineArgs:
    model: str | None = None
    # auto | float32 | bfloat16 | float16. "auto" follows the checkpoint, except that a float32
    # checkpoint is computed in bfloat16 (vLLM downcasts float32 to a half type) when the CPU has
    # native bf16 dot products (active ISA avx512bf16); elsewhere it stays float32.
    dtype: str = "auto"
    seed: int = 0
    max_model_len: int | None = None
    block_size: int = 16
    kv_cache_memory: int | None = None
    # Used when kv_cache_memory is not given: this fraction of the memory available at start-up
    # (capped at 4 GiB, as vLLM's CPU backend defaults to).
    kv_cache_fraction: float = 0.25
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None
    enable_prefix_caching: bool = True
    scheduling_policy: str = "fcfs"
    # "auto": the model's generation_config.json; "vllm": none; or a folder holding one.
    generation_config: str = "auto"
    override_generation_config: dict[str, Any] | None = None
    # vLLM's --runner auto|generate|pooling and --convert auto|embed|classify (pooling models).
    runner: str = "auto"
    convert: str = "auto"
    # vLLM's --quantization. None: GGUF weights stay packed (quantized kernels), float
    # checkpoints stay float; "gguf": the same for a .gguf file; "none": GGUF weights are
    # dequantized at load (the bfloat16 path); "q8_0" / "q4_0" / "q4_1": float weights quantized at
    # load (embeddings and lm_head to q8_0).
    quantization: str | None = None
    # vLLM's --logprobs-mode: what sampled-token logprobs report. raw_logprobs (default):
    # log_softmax of the model's logits; processed_logprobs: after bias, penalties,
    # temperature and top-k/top-p/min-p; raw_logits / processed_logits: the logits themselves.
    logprobs_mode: str = "raw_logprobs"
    # vLLM's --prefix-caching-hash-algo: prefix-cache blocks are hashed with SHA-256 (the only
    # algorithm implemented), over (parent hash, token ids, extra keys incl. cache_salt).
    prefix_caching_hash_algo: str = "sha256"
    # Test hook (fault injection): the engine step after this many steps fails. None = off.
    fault_after_steps: int | None = None
    # Process-wide (the kernels are shared): True makes a token's logits bitwise independent of
    # prefix-cache hits, chunking and the rest of the batch (every linear runs the canonical
    # GEMM); False lets large matmuls use oneDNN. None keeps the current setting
    # (FASTLM_BATCH_INVARIANT, default on).
    batch_invariant: bool | None = None

    def __post_init__(self) -> None:
        if self.quantization is not None and self.quantization not in QUANTIZATIONS:
            raise ValueError(
                f"quantization must be one of {', '.join(QUANTIZATIONS)} or None, got "
                f"{self.quantization!r}"
            )
        if self.logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(
                f"logprobs_mode must be one of {', '.join(LOGPROBS_MODES)}, got "
                f"{self.logprobs_mode!r}"
            )

    def engine_config(self, files: ModelFiles) -> _core.EngineConfig:
        cfg = _core.EngineConfig()
        cfg.model = files.gguf_file or files.path
        cfg.dtype = self.dtype
        cfg.seed = self.seed
        cfg.max_model_len = self.max_model_len or 0
        cfg.block_size = self.block_size
        cfg.kv_cache_memory = self.kv_cache_memory or 0
        cfg.kv_cache_fraction = self.kv_cache_fraction
        cfg.max_num_seqs = self.max_num_seqs
        cfg.max_num_batched_tokens = self.max_num_batched_tokens or 0
        cfg.enable_prefix_caching = self.enable_prefix_caching
        cfg.prefix_caching_hash_algo = self.prefix_caching_hash_algo
        if self.fault_after_steps is not None:
            cfg.fault_after_steps = self.fault_after_steps
        cfg.scheduling_policy = self.scheduling_policy
        cfg.quantization = self.quantization or ""
        return cfg


def remote_code_class(files: ModelFiles) -> str | None:
    """The class a model's config.json `auto_map` points at (code shipped with the model,
    which transformers runs under trust_remote_code), or None."""
    if files.is_gguf or not files.config_path:
        return None
    try:
        with open(files.config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    auto_map = config.get("auto_map") if isinstance(config, dict) else None
    if not isinstance(auto_map, dict) or not auto_map:
        return None
    for key in ("AutoModelForCausalLM", "AutoModel", *auto_map):
        if isinstance(auto_map.get(key), str):
            return str(auto_map[key])
    return None


def _rss_mib() -> float:
    """Resident set size of this process in MiB (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class Runtime:
    def __init__(self, args: EngineArgs, make_engine: Any = None) -> None:
        self.args = args
        if args.batch_invariant is not None:
            _core.ops.set_batch_invariant(args.batch_invariant)
        self.files = resolve_model(args.model)
        self.tokenizer: Tokenizer = load_tokenizer(self.files)
        cfg = args.engine_config(self.files)
        apply_pooling_defaults(cfg, self.files, args.runner, args.convert)
        try:
            self.engine: _core.Engine = (make_engine or _core.Engine)(cfg)
        except Exception as e:
            remote = remote_code_class(self.files)
            if remote is None:
                raise
            raise ValueError(
                f"{self.files.path} needs its own model code ({remote}); fastlm runs no code "
                f"from the hub (--trust-remote-code does not change that) and does not "
                f"implement this architecture: {e}"
            ) from e
        self.max_model_len: int = self.engine.max_model_len
        # Embedding / classification models: the pooling front-end (None for generation).
        self.pooler: Pooler | None = (
            Pooler(self, args.convert) if getattr(self.engine, "is_pooling", False) else None
        )
        gen = self._generation_config()
        self.default_sampling: dict[str, Any] = default_sampling_params(gen) if gen else {}
        # vLLM's override takes generation_config.json's keys (max_new_tokens, ...).
        override = args.override_generation_config or {}
        check_override(override)
        self.default_sampling.update(default_sampling_params(override))
        eos = list(self.engine.eos_token_ids)
        self.extra_stop_ids = [t for t in eos_token_ids(gen) if t not in eos] if gen else []
        self.processor = OutputProcessor(
            self.tokenizer, eos + self.extra_stop_ids, push_mask=self.engine.set_token_bitmask
        )
        # Structured outputs (generative models): EOS and the generation config's extra stop
        # ids are where a grammar may end.
        self.grammars: Grammars | None = (
            None
            if self.pooler is not None
            else Grammars(self.tokenizer, int(self.engine.vocab_size), eos + self.extra_stop_ids)
        )
        logger.info("%s", self.describe())

    def describe(self) -> str:
        """One start-up line: model, dtype, weights, KV cache blocks, the concurrency they
        allow at max_model_len, and what loading decided (e.g. float32 computed in bfloat16)."""
        e = self.engine
        line = (
            f"model {self.files.path} ({e.architecture}, {e.dtype}, "
            f"{e.weight_bytes / 2**20:.0f} MiB weights, {e.mapped_weight_bytes / 2**20:.0f} MiB "
            f"of them mapped from the file, loaded in {e.load_seconds:.2f} s, process RSS "
            f"{_rss_mib():.0f} MiB); KV cache {e.kv_cache_bytes / 2**20:.0f} "
            f"MiB reserved (resident as blocks fill) = {e.num_blocks} blocks of "
            f"{self.args.block_size} tokens; max_model_len "
            f"{self.max_model_len}, maximum concurrency {e.max_concurrency:.2f}x"
        )
        notes = list(getattr(e, "load_notes", []))
        if not _core.ops.batch_invariant():
            notes.append("batch invariance off (oneDNN for large matmuls)")
        return line + "".join(f"; {n}" for n in notes)

    def _generation_config(self) -> dict[str, Any]:
        source = self.args.generation_config
        if source == "vllm":
            return {}
        if source == "auto":
            return dict(self.files.generation_config)
        from fastlm.generation_config import read_generation_config

        return read_generation_config(source)

    def default_sampling_params(self) -> SamplingParams:
        return SamplingParams(**self.default_sampling)

    def max_tokens_for(self, params: SamplingParams, num_prompt: int) -> int:
        room = self.max_model_len - num_prompt
        if params.max_tokens is None:
            return max(1, room)
        return max(1, min(params.max_tokens, room)) if room > 0 else 1

    def add_request(
        self,
        request_id: str,
        prompt: str | None,
        tokens: list[int],
        params: SamplingParams,
        priority: int = 0,
        cache_salt: str | None = None,
    ) -> list[int]:
        """Submits a request (n children); returns the prompt token ids actually used.
        `cache_salt` keeps its prefix-cache blocks apart from other salts' (vLLM).
        Raises ValueError for a request the engine refuses (nothing is left behind)."""
        if cache_salt is not None and not cache_salt:
            raise ValueError("cache_salt must be a non-empty string")
        if params.truncate_prompt_tokens is not None:
            tokens = tokens[-params.truncate_prompt_tokens :]
        if params.bad_words:
            params.resolve_bad_words(lambda s: self.tokenizer.encode(s, add_special_tokens=False))
        matchers = self._grammar_matchers(params, tokens)
        engine_ids = self.processor.add_request(request_id, prompt, tokens, params, matchers)
        core = core_params_for_children(params, self.max_tokens_for(params, len(tokens)))
        added: list[str] = []
        try:
            mode = getattr(_core.LogprobsMode, self.args.logprobs_mode)
            for eid, cp in zip(engine_ids, core, strict=True):
                cp.logprobs_mode = mode
                if self.extra_stop_ids:
                    cp.stop_token_ids = list(cp.stop_token_ids) + self.extra_stop_ids
                self.engine.add_request(eid, tokens, cp, priority, cache_salt or "")
                added.append(eid)
                self.processor.push_first_mask(eid)
        except BaseException:
            for eid in added:
                self.engine.abort(eid)
            self.processor.abort(request_id)
            raise
        return tokens

    def _grammar_matchers(
        self, params: SamplingParams, prompt_ids: list[int]
    ) -> list[GrammarMatcher] | None:
        """One matcher per child of a constrained request (the grammar from the cache when the
        server compiled it already, off the event loop); with `reasoning_tags`, each starts
        constraining after the think block ends."""
        so = params.structured_outputs
        if so is None:
            return None
        if self.grammars is None:
            raise ValueError("structured outputs need a generative model")
        prepared = params.prepared_grammars
        if prepared is not None and len(prepared) == params.n:
            params.prepared_grammars = None  # a matcher serves one request only
            matchers = prepared
        else:
            matchers = self.grammars.matchers(so, params.n)
        tags = params.reasoning_tags
        if tags is None:
            return matchers
        phase = tags.prompt_phase(prompt_ids)
        vocab = int(self.engine.vocab_size)
        return [ReasoningGatedMatcher(m, tags, phase, vocab) for m in matchers]

    def add_audio_request(
        self,
        request_id: str,
        features: Any,
        decoder_prompt: list[int],
        params: SamplingParams,
        suppress: tuple[list[int], list[int]] = ([], []),
        priority: int = 0,
        timestamp_begin: int = -1,
    ) -> None:
        """Submits a speech-to-text request: log-mel `features` for the encoder, the decoder
        prompt's ids, and Whisper's (suppress_tokens, begin_suppress_tokens); `timestamp_begin`
        >= 0 (the id of <|0.00|>) turns on Whisper's timestamp rules. n must be 1.
        Raises ValueError for a request the engine refuses (nothing is left behind)."""
        if params.n != 1:
            raise ValueError("n must be 1 for speech-to-text requests")
        engine_ids = self.processor.add_request(request_id, None, decoder_prompt, params)
        room = self.engine.max_decoder_len - len(decoder_prompt)
        max_tokens = room if params.max_tokens is None else min(params.max_tokens, room)
        (cp,) = core_params_for_children(params, max(1, max_tokens))
        cp.logprobs_mode = getattr(_core.LogprobsMode, self.args.logprobs_mode)
        # A suppressed token is a one-token bad word: banned at every step.
        cp.bad_words = list(cp.bad_words) + [[t] for t in suppress[0]]
        cp.begin_suppress_tokens = list(suppress[1])
        cp.timestamp_begin = timestamp_begin
        try:
            self.engine.add_encoder_decoder_request(
                engine_ids[0], features, decoder_prompt, cp, priority
            )
        except BaseException:
            self.processor.abort(request_id)
            raise

    def abort(self, request_id: str) -> None:
        for eid in self.processor.abort(request_id):
            self.engine.abort(eid)
