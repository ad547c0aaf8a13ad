"""SamplingParams with vLLM's field names, defaults and validation messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from fastlm import _core
from fastlm.reasoning import ThinkTokens
from fastlm.structured_outputs import GrammarMatcher, StructuredOutputsParams

_SAMPLING_EPS = 1e-5


class RequestOutputKind(Enum):
    """What each RequestOutput of a request holds (vLLM's RequestOutputKind)."""

    CUMULATIVE = 0  # everything so far (the offline API's default)
    DELTA = 1  # only what is new since the previous output: O(new tokens) per output
    FINAL_ONLY = 2  # one output, when the request finishes


@dataclass
class SamplingParams:
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    detokenize: bool = True
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: list[int] | None = None
    truncate_prompt_tokens: int | None = None
    extra_args: dict[str, Any] | None = None
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    structured_outputs: StructuredOutputsParams | None = None
    # The server's matchers for structured_outputs, made off the event loop (one per child).
    prepared_grammars: list[GrammarMatcher] | None = field(default=None, repr=False)
    # The server's --reasoning-parser tags: the grammar applies after the think block ends.
    reasoning_tags: ThinkTokens | None = field(default=None, repr=False)
    # Filled by from_tokenizer(): token sequences of bad_words.
    _bad_words_token_ids: list[list[int]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.logprobs is True:  # type: ignore[comparison-overlap]
            self.logprobs = 1
        if self.prompt_logprobs is True:  # type: ignore[comparison-overlap]
            self.prompt_logprobs = 1
        self._verify()
        if self.temperature < _SAMPLING_EPS:
            # Greedy: the other sampling knobs have no effect.
            self.top_p = 1.0
            self.top_k = 0
            self.min_p = 0.0

    def _verify(self) -> None:
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}.")
        if not -2.0 <= self.presence_penalty <= 2.0:
            raise ValueError(f"presence_penalty must be in [-2, 2], got {self.presence_penalty}.")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            raise ValueError(f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}.")
        if self.repetition_penalty <= 0.0:
            raise ValueError(
                f"repetition_penalty must be greater than zero, got {self.repetition_penalty}."
            )
        if self.temperature < 0.0:
            raise ValueError(f"temperature must be non-negative, got {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.top_k < -1:
            raise ValueError(f"top_k must be 0 (disable), or at least 1, got {self.top_k}.")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}.")
        if self.min_tokens < 0:
            raise ValueError(
                f"min_tokens must be greater than or equal to 0, got {self.min_tokens}."
            )
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens must be less than or equal to max_tokens={self.max_tokens}, "
                f"got {self.min_tokens}."
            )
        if self.logprobs is not None and self.logprobs < 0:
            raise ValueError(f"logprobs must be non-negative, got {self.logprobs}.")
        if self.prompt_logprobs is not None and self.prompt_logprobs < 0:
            raise ValueError(f"prompt_logprobs must be non-negative, got {self.prompt_logprobs}.")
        if self.truncate_prompt_tokens is not None and self.truncate_prompt_tokens < 1:
            raise ValueError(
                f"truncate_prompt_tokens must be >= 1, got {self.truncate_prompt_tokens}"
            )
        assert isinstance(self.stop, list)
        if any(not s for s in self.stop):
            raise ValueError("stop cannot contain an empty string.")
        if self.stop and not self.detokenize:
            raise ValueError("stop strings are only supported when detokenize is True.")

    @property
    def greedy(self) -> bool:
        return self.temperature < _SAMPLING_EPS

    def resolve_bad_words(self, encode: Any) -> None:
        """Tokenizes bad_words as vLLM does: each word with and without a leading space."""
        self._bad_words_token_ids = []
        for word in self.bad_words or []:
            for prefix_space in (False, True):
                text = (" " if prefix_space else "") + word.lstrip()
                ids = encode(text)
                if not ids:
                    continue
                if prefix_space and self._bad_words_token_ids:
                    last = self._bad_words_token_ids[-1]
                    if ids[0] == last[0] or len(ids) != len(last):
                        continue
                self._bad_words_token_ids.append(ids)

    def to_core(self, max_tokens: int, seed: int | None = None) -> _core.SamplingParams:
        p = _core.SamplingParams()
        p.n = 1
        p.temperature = float(self.temperature)
        p.top_p = float(self.top_p)
        p.top_k = int(self.top_k)
        p.min_p = float(self.min_p)
        p.presence_penalty = float(self.presence_penalty)
        p.frequency_penalty = float(self.frequency_penalty)
        p.repetition_penalty = float(self.repetition_penalty)
        p.seed = self.seed if seed is None else seed
        p.max_tokens = int(max_tokens)
        p.min_tokens = int(self.min_tokens)
        p.ignore_eos = bool(self.ignore_eos)
        p.stop_token_ids = list(self.stop_token_ids or [])
        p.logit_bias = [(int(k), float(v)) for k, v in (self.logit_bias or {}).items()]
        p.allowed_token_ids = list(self.allowed_token_ids or [])
        p.bad_words = [list(w) for w in self._bad_words_token_ids]
        p.logprobs = -1 if self.logprobs is None else int(self.logprobs)
        p.prompt_logprobs = -1 if self.prompt_logprobs is None else int(self.prompt_logprobs)
        p.has_grammar = self.structured_outputs is not None
        return p
