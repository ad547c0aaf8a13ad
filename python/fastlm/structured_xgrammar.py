"""The xgrammar backend of structured outputs (optional: `pip install xgrammar==0.2.8`), chosen
with --structured-outputs-config '{"backend": "xgrammar"}' or a request's backend field. Same
contract as llguidance's matchers: the next token bitmask as little-endian 32-bit words."""

from __future__ import annotations

import importlib.util
import json
from typing import TYPE_CHECKING, Any

from fastlm.structured_outputs import (
    GrammarError,
    GrammarMatcher,
    StructuredOutputsParams,
    _fit_mask,
    _no_additional_properties,
)

if TYPE_CHECKING:
    import xgrammar as xgr

PIN = "xgrammar==0.2.8"


def available() -> bool:
    return importlib.util.find_spec("xgrammar") is not None


def _choice_grammar(choices: list[str]) -> str:
    """EBNF for a choice among literal strings (escaped as xgrammar's EBNF strings)."""
    return "root ::= " + " | ".join(json.dumps(c) for c in choices)


class XGrammarBackend:
    """Compiles grammars with xgrammar for one vocabulary (the compiler caches them)."""

    def __init__(self, tokenizer_json: str, vocab_size: int, eos_token_ids: list[int]) -> None:
        import tokenizers
        import xgrammar as xgr

        # The vocabulary as tokenizer.json spells it, and xgrammar's reading of its type
        # (byte-level, byte-fallback, raw): what from_huggingface does, without transformers.
        vocab = tokenizers.Tokenizer.from_str(tokenizer_json).get_vocab(with_added_tokens=True)
        encoded = [""] * (max(vocab.values()) + 1)
        for text, i in vocab.items():
            encoded[i] = text
        meta = xgr.TokenizerInfo._detect_metadata_from_hf(tokenizer_json)
        info = xgr.TokenizerInfo(
            encoded,
            xgr.VocabType(meta["vocab_type"]),
            vocab_size=vocab_size,
            stop_token_ids=list(eos_token_ids),
            add_prefix_space=bool(meta["add_prefix_space"]),
        )
        self.vocab_size = vocab_size
        self.compiler = xgr.GrammarCompiler(info, max_threads=1)

    def compile(self, p: StructuredOutputsParams, param: str | None) -> xgr.CompiledGrammar:
        """xgrammar's compiled grammar for `p`; GrammarError naming `param` when it refuses."""
        kind = p.kind
        if p.whitespace_pattern is not None:
            raise GrammarError(
                "whitespace_pattern needs the llguidance backend (xgrammar has no such option)",
                param,
            )
        try:
            return self._compile(p, kind)
        except Exception as e:  # noqa: BLE001 - xgrammar's errors (tvm-ffi's too) are all refusals
            raise GrammarError(
                f"invalid {kind} for structured outputs (xgrammar): {e}", param
            ) from e

    def _compile(self, p: StructuredOutputsParams, kind: str) -> xgr.CompiledGrammar:
        c = self.compiler
        ws = not p.disable_any_whitespace
        if kind == "json":
            schema: Any = json.loads(p.json) if isinstance(p.json, str) else p.json
            if p.disable_additional_properties:
                schema = _no_additional_properties(schema)
            # strict_mode=False: JSON Schema's own default (extra properties allowed unless the
            # schema says), as llguidance does.
            return c.compile_json_schema(json.dumps(schema), any_whitespace=ws, strict_mode=False)
        if kind == "json_object":
            return c.compile_json_schema('{"type": "object"}', any_whitespace=ws)
        if kind == "regex":
            assert p.regex is not None
            return c.compile_regex(p.regex)
        if kind == "choice":
            assert p.choice is not None
            if not p.choice or not all(isinstance(x, str) for x in p.choice):
                raise ValueError("choice must be a non-empty list of strings")
            return c.compile_grammar(_choice_grammar(p.choice))
        if kind == "grammar":
            assert p.grammar is not None
            if "::=" in p.grammar:  # GBNF / xgrammar's EBNF
                return c.compile_grammar(p.grammar)
            return c.compile_lark(p.grammar)
        raise ValueError(f"{kind} needs the llguidance backend")

    def matcher(self, compiled: xgr.CompiledGrammar) -> XGrammarMatcher:
        import xgrammar as xgr

        return XGrammarMatcher(xgr.GrammarMatcher(compiled), self.vocab_size)


class XGrammarMatcher(GrammarMatcher):
    def __init__(self, matcher: xgr.GrammarMatcher, vocab_size: int) -> None:
        import xgrammar as xgr

        self._m = matcher
        self.num_tokens = 0
        self.vocab_size = vocab_size
        self._words = (vocab_size + 31) // 32
        self._buf = xgr.allocate_token_bitmask(1, vocab_size)
        self._mask: tuple[int, bytes] | None = None
        self._error: str | None = None

    def copy(self) -> XGrammarMatcher:
        other = XGrammarMatcher(self._m.fork(), self.vocab_size)
        other.num_tokens, other._mask, other._error = self.num_tokens, self._mask, self._error
        return other

    def consume(self, tokens: list[int]) -> str | None:
        for t in tokens:
            if self._m.is_terminated():
                break  # EOS after accept: the request finishes with it
            if not self._m.accept_token(t):
                self._error = f"the grammar rejected token {t}"
                return self._error
            self.num_tokens += 1
        return None

    def bitmask(self) -> bytes:
        if self._mask is not None and self._mask[0] == self.num_tokens:
            return self._mask[1]
        self._m.fill_next_token_bitmask(self._buf)
        mask = _fit_mask(self._buf.numpy().tobytes(), self._words)
        self._mask = (self.num_tokens, mask)
        return mask

    def is_accepting(self) -> bool:
        return bool(self._m.is_completed() or self._m.is_terminated())

    @property
    def error(self) -> str | None:
        return self._error
