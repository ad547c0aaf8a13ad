"""Structured outputs: grammars (JSON schema, regex, choice, Lark/GBNF, structural tags) compiled
by llguidance, and the per-request matcher that turns each sampled token into the next token
bitmask.

The C++ engine never sees a grammar: a constrained request is added with `has_grammar`, and
Python pushes its mask for output token k (`Engine.set_token_bitmask`) once token k-1 is known,
while the forward of the step that samples token k runs; the sampler waits for it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import llguidance as llg

from fastlm.reasoning import ThinkTokens

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

# Backends a request or --structured-outputs-config may name: llguidance ("guidance" in vLLM)
# and, when installed, xgrammar. "auto" picks llguidance, which serves every kind of request
# (xgrammar has no whitespace_pattern nor structural tags). "outlines" and
# "lm-format-enforcer" are vLLM's other backends, refused.
BACKENDS = ("auto", "guidance", "llguidance", "xgrammar")
OTHER_BACKENDS = ("outlines", "lm-format-enforcer")


def resolve_backend(name: str | None) -> str:
    """`llguidance` or `xgrammar` for a backend name of BACKENDS (None: auto)."""
    return "xgrammar" if name == "xgrammar" else "llguidance"


@dataclass
class StructuredOutputsParams:
    """vLLM's StructuredOutputsParams: exactly one of json / regex / choice / grammar /
    json_object / structural_tag."""

    json: str | dict[str, Any] | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    structural_tag: str | dict[str, Any] | None = None
    disable_fallback: bool = False
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None
    backend: str | None = None  # one of BACKENDS; None: the server's

    def __post_init__(self) -> None:
        kinds = [k for k in _KINDS if getattr(self, k) not in (None, False)]
        if len(kinds) != 1:
            raise ValueError(
                "structured_outputs must set exactly one of json, regex, choice, grammar, "
                f"json_object, structural_tag (got {', '.join(kinds) or 'none'})"
            )

    @property
    def kind(self) -> str:
        return next(k for k in _KINDS if getattr(self, k) not in (None, False))

    def cache_key(self) -> str:
        return json.dumps(
            {f.name: getattr(self, f.name) for f in fields(self)}, sort_keys=True, default=str
        )


_KINDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")

# vLLM's StructuredOutputsConfig (--structured-outputs-config, LLM(structured_outputs_config=)):
# backend, keys that set request defaults, and enable_in_reasoning (with a reasoning parser,
# constrain the reasoning too).
CONFIG_DEFAULTS = ("disable_any_whitespace", "disable_additional_properties")
CONFIG_OPTIONS = ("backend", "enable_in_reasoning")


def check_structured_outputs_config(config: dict[str, Any]) -> None:
    """Raises ValueError for an unknown key or a backend that is not available."""
    unknown = sorted(k for k in config if k not in CONFIG_DEFAULTS + CONFIG_OPTIONS)
    if unknown:
        raise ValueError(f"unknown keys {', '.join(unknown)}")
    backend = config.get("backend", "auto")
    if backend not in BACKENDS:
        raise ValueError(
            f"backend {backend!r} is not available; fastlm serves grammars with llguidance or "
            f"xgrammar ({', '.join(BACKENDS)})"
        )
    from fastlm.structured_xgrammar import PIN, available

    if backend == "xgrammar" and not available():
        raise ValueError(f"backend 'xgrammar' is not installed (pip install {PIN})")


def with_config_defaults(
    p: StructuredOutputsParams | None, config: dict[str, Any] | None
) -> StructuredOutputsParams | None:
    """`p` with the config's defaults filled in (in place)."""
    if p is not None:
        for key in CONFIG_DEFAULTS:
            if (config or {}).get(key):
                setattr(p, key, True)
        if p.backend is None:
            p.backend = (config or {}).get("backend")
    return p


class GrammarError(ValueError):
    """A grammar llguidance refuses; `param` names the request field it came from."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _no_additional_properties(schema: Any) -> Any:
    """The schema with `additionalProperties: false` on every object that does not say."""
    if isinstance(schema, list):
        return [_no_additional_properties(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _no_additional_properties(v) for k, v in schema.items()}
    if (out.get("type") == "object" or "properties" in out) and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _json_options(p: StructuredOutputsParams) -> JsonCompileOptions:
    opts: JsonCompileOptions = {"whitespace_flexible": not p.disable_any_whitespace}
    if p.whitespace_pattern is not None:
        opts["whitespace_pattern"] = p.whitespace_pattern
    return opts


def _structural_tag_grammar(spec: str | dict[str, Any]) -> str:
    """vLLM's structural tag {"structures": [{"begin", "schema", "end"}], "triggers": [...]}."""
    tag = json.loads(spec) if isinstance(spec, str) else spec
    if not isinstance(tag, dict):
        raise ValueError("structural_tag must be a JSON object")
    triggers = tag.get("triggers")
    structures = tag.get("structures")
    if not isinstance(triggers, list) or not isinstance(structures, list) or not structures:
        raise ValueError("structural_tag needs a list of triggers and a non-empty structures list")
    tags = []
    for s in structures:
        begin = s.get("begin") if isinstance(s, dict) else None
        if not isinstance(begin, str):
            raise ValueError("each structural_tag structure needs begin, schema and end")
        trigger = next((t for t in triggers if isinstance(t, str) and begin.startswith(t)), None)
        if trigger is None:
            raise ValueError(f"structural_tag: no trigger starts structure begin {begin!r}")
        tags.append(
            llg.StructTag(
                trigger=trigger, begin=begin, grammar=s.get("schema", {}), end=s.get("end", "")
            )
        )
    return str(llg.StructTag.to_grammar(tags))


def grammar_text(p: StructuredOutputsParams) -> str:
    """llguidance's grammar for `p` (not yet validated). Raises ValueError for malformed input."""
    kind = p.kind
    if kind == "json":
        assert p.json is not None
        schema: Any = json.loads(p.json) if isinstance(p.json, str) else p.json
        if not isinstance(schema, dict | bool):
            raise ValueError("the JSON schema must be an object")
        if p.disable_additional_properties:
            schema = _no_additional_properties(schema)
        return str(llg.LLMatcher.grammar_from_json_schema(schema, defaults=_json_options(p)))
    if kind == "json_object":
        return str(
            llg.LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=_json_options(p))
        )
    if kind == "regex":
        assert p.regex is not None
        return str(llg.LLMatcher.grammar_from_regex(p.regex))
    if kind == "choice":
        assert p.choice is not None
        if not p.choice or not all(isinstance(c, str) for c in p.choice):
            raise ValueError("choice must be a non-empty list of strings")
        return str(llg.grammar_from("choice", json.dumps(p.choice)))
    if kind == "grammar":
        assert p.grammar is not None
        return str(llg.grammar_from("grammar", p.grammar))  # Lark, or GBNF converted to Lark
    assert p.structural_tag is not None
    return _structural_tag_grammar(p.structural_tag)


_LL_TOKENIZERS: dict[tuple[str, int, tuple[int, ...]], llg.LLTokenizer] = {}
_LL_TOKENIZERS_LOCK = threading.Lock()


def _ll_tokenizer(spec: str, vocab_size: int, eos: tuple[int, ...]) -> llg.LLTokenizer:
    """llguidance's tokenizer, shared by every engine of the process over the same vocabulary
    (building one takes seconds)."""
    key = (hashlib.sha256(spec.encode()).hexdigest(), vocab_size, eos)
    with _LL_TOKENIZERS_LOCK:
        found = _LL_TOKENIZERS.get(key)
        if found is None:
            found = _LL_TOKENIZERS[key] = llg.LLTokenizer(
                spec, n_vocab=vocab_size, eos_token=list(eos)
            )
        return found


class Grammars:
    """Compiles and caches grammars for one tokenizer; builds llguidance's tokenizer once, in a
    background thread (seconds for a 128k vocabulary)."""

    CACHE_SIZE = 256

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: list[int]) -> None:
        self._tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._eos = list(eos_token_ids)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastlm-grammar")
        self._ll_tokenizer: Future[llg.LLTokenizer] | None = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._xg_cache: OrderedDict[str, Any] = OrderedDict()  # xgrammar's CompiledGrammar
        self._xgrammar: Any = None  # XGrammarBackend, made on first use
        self._xg_lock = threading.Lock()
        self.num_compiled = 0  # cache misses, for tests and the benchmark

    def warm_up(self) -> Future[llg.LLTokenizer]:
        """Starts building llguidance's tokenizer (once); returns its future."""
        with self._lock:
            if self._ll_tokenizer is None:
                self._ll_tokenizer = self._pool.submit(self._build_tokenizer)
            return self._ll_tokenizer

    def _build_tokenizer(self) -> llg.LLTokenizer:
        return _ll_tokenizer(self._tokenizer.backend.to_str(), self.vocab_size, tuple(self._eos))

    @property
    def ll_tokenizer(self) -> llg.LLTokenizer:
        return self.warm_up().result()

    def xgrammar_backend(self) -> Any:
        with self._xg_lock:
            if self._xgrammar is None:
                from fastlm.structured_xgrammar import XGrammarBackend

                self._xgrammar = XGrammarBackend(
                    self._tokenizer.backend.to_str(), self.vocab_size, self._eos
                )
            return self._xgrammar

    def validate(self, p: StructuredOutputsParams, param: str | None = None) -> None:
        """Compiles `p` with its backend (cached); GrammarError naming `param` when refused."""
        if resolve_backend(p.backend) == "xgrammar":
            self._compile_xgrammar(p, param)
        else:
            self.compile(p, param)

    def _compile_xgrammar(self, p: StructuredOutputsParams, param: str | None) -> Any:
        from fastlm.structured_xgrammar import PIN, available

        if not available():
            raise GrammarError(
                f"structured outputs backend 'xgrammar' is not installed (pip install {PIN})",
                param,
            )
        key = "xgrammar:" + p.cache_key()
        with self._lock:
            hit = self._xg_cache.get(key)
            if hit is not None:
                self._xg_cache.move_to_end(key)
                return hit
        compiled = self.xgrammar_backend().compile(p, param)
        with self._lock:
            self.num_compiled += 1
            self._xg_cache[key] = compiled
            while len(self._xg_cache) > self.CACHE_SIZE:
                self._xg_cache.popitem(last=False)
        return compiled

    def compile(self, p: StructuredOutputsParams, param: str | None = None) -> str:
        """The validated llguidance grammar of `p`, from the cache when seen before. Raises
        GrammarError naming `param` when llguidance refuses it. Thread-safe; needs no
        tokenizer."""
        key = p.cache_key()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        try:
            grammar = grammar_text(p)
        except (ValueError, TypeError, AssertionError) as e:
            raise GrammarError(f"invalid {p.kind} for structured outputs: {e}", param) from e
        is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar, None)
        if is_error:
            raise GrammarError(
                f"invalid {p.kind} for structured outputs: {'; '.join(messages)}", param
            )
        with self._lock:
            self.num_compiled += 1
            self._cache[key] = grammar
            while len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)
        return grammar

    def matcher(self, grammar: str) -> GrammarMatcher:
        return LLGuidanceMatcher(llg.LLMatcher(self.ll_tokenizer, grammar), self.vocab_size)

    def matchers(
        self, p: StructuredOutputsParams, n: int, param: str | None = None
    ) -> list[GrammarMatcher]:
        """n fresh matchers for one request, their first masks computed: the server calls this
        in a worker thread, so admitting the request costs the event loop nothing."""
        first: GrammarMatcher
        if resolve_backend(p.backend) == "xgrammar":
            compiled = self._compile_xgrammar(p, param)
            first = self.xgrammar_backend().matcher(compiled)
        else:
            first = self.matcher(self.compile(p, param))
        first.bitmask()
        return [first] + [first.copy() for _ in range(n - 1)]


class GrammarMatcher(ABC):
    """One constrained sequence: consumes its sampled tokens, yields the next token bitmask
    (little-endian 32-bit words, bit t set when token t is allowed). `num_tokens`: the output
    tokens consumed so far = the step the next mask is for."""

    num_tokens: int

    @abstractmethod
    def copy(self) -> GrammarMatcher:
        """An independent matcher in the same state (cheaper than compiling again)."""

    @abstractmethod
    def consume(self, tokens: list[int]) -> str | None:
        """Advances by the sampled tokens; returns an error message when the grammar rejects
        one (the sampler only draws allowed tokens, so this means a bug or a stop token)."""

    @abstractmethod
    def bitmask(self) -> bytes: ...

    @abstractmethod
    def is_accepting(self) -> bool: ...

    @property
    @abstractmethod
    def error(self) -> str | None: ...


def _fit_mask(mask: bytes, words: int) -> bytes:
    """A backend's mask sized to the model's vocabulary (the tokenizer's may differ)."""
    if len(mask) == 4 * words:
        return mask
    return (mask + bytes(4 * words))[: 4 * words]


class LLGuidanceMatcher(GrammarMatcher):
    """llguidance's matcher."""

    def __init__(self, matcher: llg.LLMatcher, vocab_size: int) -> None:
        self._m = matcher
        self.num_tokens = 0
        self._words = (vocab_size + 31) // 32
        self._mask: tuple[int, bytes] | None = None  # (step, mask) already computed
        if matcher.is_error():
            raise GrammarError(matcher.get_error())

    def copy(self) -> LLGuidanceMatcher:
        other = LLGuidanceMatcher.__new__(LLGuidanceMatcher)
        other._m = self._m.deep_copy()
        other.num_tokens = self.num_tokens
        other._words = self._words
        other._mask = self._mask
        return other

    def consume(self, tokens: list[int]) -> str | None:
        for t in tokens:
            if self._m.is_stopped():
                break  # EOS after accept: the request finishes with it
            if not self._m.consume_token(t):
                return self._m.get_error() or f"the grammar rejected token {t}"
            self.num_tokens += 1
        return None

    def bitmask(self) -> bytes:
        if self._mask is not None and self._mask[0] == self.num_tokens:
            return self._mask[1]
        mask = _fit_mask(bytes(self._m.compute_bitmask()), self._words)
        self._mask = (self.num_tokens, mask)
        return mask

    def is_accepting(self) -> bool:
        return bool(self._m.is_accepting())

    @property
    def error(self) -> str | None:
        return self._m.get_error() if self._m.is_error() else None


@functools.lru_cache(maxsize=8)
def _all_allowed(vocab_size: int) -> bytes:
    words = (vocab_size + 31) // 32
    full, rest = divmod(vocab_size, 8)
    mask = b"\xff" * full + (bytes([(1 << rest) - 1]) if rest else b"")
    return mask + bytes(4 * words - len(mask))


def _with_token(mask: bytes, token: int) -> bytes:
    out = bytearray(mask)
    out[token // 8] |= 1 << (token % 8)
    return bytes(out)


class ReasoningGatedMatcher(GrammarMatcher):
    """A matcher that starts constraining after the reasoning block ends (--reasoning-parser):
    while the model reasons every token is allowed; once the end tag's tokens are sampled the
    grammar applies from the next token. Phases: `reasoning`, `answer` (the grammar), or `open`
    (the first token: the grammar's tokens or the start tag's, which opens a think block)."""

    def __init__(self, inner: GrammarMatcher, tags: ThinkTokens, phase: str, vocab_size: int):
        assert phase in ("reasoning", "answer", "open")
        self.inner = inner
        self.tags = tags
        self.phase = phase if phase != "open" or len(tags.start) == 1 else "answer"
        self.vocab_size = vocab_size
        self._skipped = 0  # tokens the grammar did not see (the reasoning block)
        self._tail: tuple[int, ...] = ()  # the last tokens, to spot the end tag
        self.num_tokens = inner.num_tokens

    def copy(self) -> ReasoningGatedMatcher:
        other = ReasoningGatedMatcher(self.inner.copy(), self.tags, "answer", self.vocab_size)
        other.phase, other._skipped, other._tail = self.phase, self._skipped, self._tail
        other.num_tokens = self.num_tokens
        return other

    def consume(self, tokens: list[int]) -> str | None:
        error = None
        i = 0
        while i < len(tokens):
            if self.phase == "answer":
                error = self.inner.consume(tokens[i:])
                break
            t = tokens[i]
            if self.phase == "open":
                if t != self.tags.start[0]:
                    self.phase = "answer"
                    continue
                self.phase = "reasoning"
            else:
                end = self.tags.end
                self._tail = (*self._tail, t)[-len(end) :]
                if self._tail == end:
                    self.phase = "answer"
            self._skipped += 1
            i += 1
        self.num_tokens = self._skipped + self.inner.num_tokens
        return error

    def bitmask(self) -> bytes:
        if self.phase == "answer":
            return self.inner.bitmask()
        if self.phase == "reasoning":
            return _all_allowed(self.vocab_size)
        return _with_token(self.inner.bitmask(), self.tags.start[0])

    def is_accepting(self) -> bool:
        return self.phase == "answer" and self.inner.is_accepting()

    @property
    def error(self) -> str | None:
        return self.inner.error
