"""Streaming text out of token ids, and stop strings that never leak into the stream."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

# Prompt tokens decoded ahead of the first output token: enough context for decoders that
# treat the first token of a text specially (SentencePiece strips its leading space).
_INITIAL_CONTEXT_TOKENS = 5
_REPLACEMENT_CHAR = "\ufffd"


class _Decoder(Protocol):
    def decode(
        self,
        ids: Sequence[int],
        skip_special_tokens: bool = ...,
        spaces_between_special_tokens: bool = ...,
    ) -> str: ...


class IncrementalDetokenizer:
    """Turns a growing list of output ids into text deltas, vLLM style.

    Each step decodes the window ids[prefix_offset:] and compares it with the text of
    ids[prefix_offset:read_offset] (what was already emitted from that window); the difference is
    the new text. Decoding a window rather than single tokens keeps spaces and multi-byte
    characters right. A window whose text ends in U+FFFD ends inside a UTF-8 character, so it is
    held back until later tokens complete it (or until `flush`).

        ids:  [ ... prompt ... | out0 out1 out2 ... ]
                     ^prefix_offset    ^read_offset  ^len(ids)
                     |-- emitted ----|-- pending ---|
    """

    def __init__(
        self,
        tokenizer: _Decoder,
        prompt_ids: Sequence[int] = (),
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = True,
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._spaces_between_special_tokens = spaces_between_special_tokens
        self._ids: list[int] = list(prompt_ids[-_INITIAL_CONTEXT_TOKENS:])
        self._num_prompt_context = len(self._ids)
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self._output_text = ""

    @property
    def output_ids(self) -> list[int]:
        return self._ids[self._num_prompt_context :]

    @property
    def output_text(self) -> str:
        """All text emitted so far."""
        return self._output_text

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(
            ids,
            skip_special_tokens=self._skip_special_tokens,
            spaces_between_special_tokens=self._spaces_between_special_tokens,
        )

    def add_tokens(self, new_ids: Sequence[int]) -> str:
        """Append output ids; return the text they complete (possibly "")."""
        if not new_ids:
            return ""
        self._ids.extend(new_ids)
        emitted = self._decode(self._ids[self._prefix_offset : self._read_offset])
        window = self._decode(self._ids[self._prefix_offset :])
        if len(window) <= len(emitted) or window.endswith(_REPLACEMENT_CHAR):
            return ""  # nothing new, or a character still incomplete
        delta = window[len(emitted) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        self._output_text += delta
        return delta

    def flush(self) -> str:
        """At the end of the request: emit what was held back, incomplete characters included."""
        emitted = self._decode(self._ids[self._prefix_offset : self._read_offset])
        window = self._decode(self._ids[self._prefix_offset :])
        delta = window[len(emitted) :] if len(window) > len(emitted) else ""
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        self._output_text += delta
        return delta


class StopChecker:
    """Finds stop strings in streamed text and decides what may be emitted.

    `update(text)` takes the whole output text so far and returns (delta, stopped, matched):
    `delta` is the new text safe to emit. A tail of the text that could still grow into a stop
    string is held back, so a stop string split over tokens never reaches the client. On a match
    the text ends before the stop string (or after it with include_stop_str_in_output).
    """

    def __init__(
        self, stop: Sequence[str] | None, include_stop_str_in_output: bool = False
    ) -> None:
        self.stop = [s for s in (stop or []) if s]
        self.include_stop_str_in_output = include_stop_str_in_output
        self._emitted = 0
        self.stopped = False
        self.matched_stop: str | None = None
        self.text = ""  # everything emitted so far

    def _held_back(self, text: str, start: int) -> int:
        """Length of the longest tail of text[start:] that is a proper prefix of a stop string."""
        longest = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text) - start), longest, -1):
                if text.endswith(s[:n]):
                    longest = n
                    break
        return longest

    def update(self, text: str) -> tuple[str, bool, str | None]:
        if self.stopped:
            return "", True, self.matched_stop
        # A stop string cannot start inside emitted text: its start would have been held back.
        best: tuple[int, int, str] | None = None  # (position, -length, stop)
        for s in self.stop:
            pos = text.find(s, self._emitted)
            if pos >= 0 and (best is None or (pos, -len(s)) < best[:2]):
                best = (pos, -len(s), s)
        if best is not None:
            pos, _, s = best
            end = pos + len(s) if self.include_stop_str_in_output else pos
            delta = text[self._emitted : end]
            self._emitted = end
            self.text += delta
            self.stopped, self.matched_stop = True, s
            return delta, True, s
        end = len(text) - self._held_back(text, self._emitted)
        delta = text[self._emitted : end]
        self._emitted = max(self._emitted, end)
        self.text += delta
        return delta, False, None

    def flush(self, text: str) -> str:
        """The request ended without a stop string: release the held-back tail."""
        if self.stopped:
            return ""
        delta = text[self._emitted :]
        self._emitted = len(text)
        self.text += delta
        return delta
