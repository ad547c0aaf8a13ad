"""Reasoning parsers (vLLM's --reasoning-parser): split a reasoning model's output into its
reasoning (between think tags) and the answer.

One incremental state machine serves streaming and non-streaming alike (the non-streamed split
is the stream fed the whole text at once), so streamed deltas always reassemble into exactly
the non-streamed message. Text that may be the start of a tag is held back until it is known.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def _rfind(ids: Sequence[int], seq: tuple[int, ...]) -> int:
    """Index of the last occurrence of `seq` in `ids`, or -1."""
    n = len(seq)
    for i in range(len(ids) - n, -1, -1):
        if tuple(ids[i : i + n]) == seq:
            return i
    return -1


@dataclass(frozen=True)
class ThinkTokens:
    """A reasoning parser's tags as token ids: structured outputs and tool grammars apply to
    the tokens after the end tag (the grammar starts once its tokens are sampled)."""

    start: tuple[int, ...]
    end: tuple[int, ...]
    implicit_start: bool

    def prompt_block(self, prompt_ids: Sequence[int]) -> str | None:
        """`open` when the prompt ends inside a think block (a template or a continued
        assistant message opened it), `closed` when its last tag closes one (Qwen3's template
        with enable_thinking=False), None when it has no tags."""
        tail = prompt_ids[-4096:]  # the generation prompt is at the end
        start, end = _rfind(tail, self.start), _rfind(tail, self.end)
        if start > end:
            return "open"
        return "closed" if end >= 0 else None

    def prompt_phase(self, prompt_ids: Sequence[int]) -> str:
        """Where the output starts: `reasoning` (in a think block), `answer` (after one), or
        `open` (the output may open one with the start tag)."""
        block = self.prompt_block(prompt_ids)
        if block is not None:
            return "reasoning" if block == "open" else "answer"
        return "reasoning" if self.implicit_start else "open"


@dataclass(frozen=True)
class ReasoningParser:
    name: str
    start: str = "<think>"
    end: str = "</think>"
    # DeepSeek-R1's template opens the think block in the prompt: output before the end tag is
    # reasoning even without a start tag, and an unterminated output is all reasoning. Qwen3
    # reasons only when the output opens with the start tag (enable_thinking=False templates
    # close the block in the prompt).
    implicit_start: bool = False

    def think_tokens(self, tokenizer: Any) -> ThinkTokens:
        def ids(tag: str) -> tuple[int, ...]:
            return tuple(tokenizer.encode(tag, add_special_tokens=False))

        return ThinkTokens(ids(self.start), ids(self.end), self.implicit_start)

    def stream(self, prompt_block: str | None = None) -> ReasoningStream:
        """`prompt_block`: ThinkTokens.prompt_block of the prompt, when known."""
        return ReasoningStream(self, prompt_block)

    def split(self, text: str) -> tuple[str | None, str | None]:
        """(reasoning, content) of a whole output; None where there is none."""
        s = self.stream()
        r1, c1 = s.feed(text)
        r2, c2 = s.finish()
        reasoning, content = r1 + r2, c1 + c2
        return (reasoning or None), (content or None)


REASONING_PARSERS: dict[str, ReasoningParser] = {
    "deepseek_r1": ReasoningParser("deepseek_r1", implicit_start=True),
    "qwen3": ReasoningParser("qwen3"),
}


def get_reasoning_parser(name: str) -> ReasoningParser:
    try:
        return REASONING_PARSERS[name]
    except KeyError:
        raise ValueError(
            f"unknown reasoning parser {name!r} (one of {', '.join(sorted(REASONING_PARSERS))})"
        ) from None


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ReasoningStream:
    """Feeds output text in pieces; returns (reasoning delta, content delta) for each."""

    def __init__(self, parser: ReasoningParser, prompt_block: str | None = None) -> None:
        self.p = parser
        self.phase = "start"  # start -> reasoning -> content
        self.buf = ""
        self.reasoned = False  # whether the output had a reasoning part
        self.ended = False  # whether reasoning is over (structured outputs / tools apply)
        self._after_end = False  # newlines right after the end tag are dropped
        if prompt_block == "open":  # the output starts inside the block
            self.phase, self.reasoned = "reasoning", True
        elif prompt_block == "closed":  # the output is the answer
            self.phase, self.ended = "content", True

    def feed(self, text: str) -> tuple[str, str]:
        self.buf += text
        reasoning = content = ""
        if self.phase == "start":
            head = self.buf.lstrip()
            if head.startswith(self.p.start):
                self.buf = head[len(self.p.start) :]
                self.phase, self.reasoned = "reasoning", True
            elif self.p.start.startswith(head):
                return "", ""  # may still become the start tag
            elif self.p.implicit_start:
                self.phase, self.reasoned = "reasoning", True
            else:
                self.phase, self.ended = "content", True
        if self.phase == "reasoning":
            i = self.buf.find(self.p.end)
            if i < 0:
                keep = _partial_suffix(self.buf, self.p.end)
                reasoning = self.buf[: len(self.buf) - keep]
                self.buf = self.buf[len(self.buf) - keep :]
                return reasoning, ""
            reasoning = self.buf[:i]
            self.buf = self.buf[i + len(self.p.end) :]
            self.phase, self.ended, self._after_end = "content", True, True
        if self.phase == "content":
            if self._after_end:
                self.buf = self.buf.lstrip("\n")
                self._after_end = not self.buf
            content, self.buf = self.buf, ""
        return reasoning, content

    def finish(self) -> tuple[str, str]:
        """What is still held back, at the end of the output."""
        rest, self.buf = self.buf, ""
        if self.phase == "reasoning":
            return rest, ""
        if self.phase == "start" and self.p.implicit_start and rest:
            self.reasoned = True
            return rest, ""
        return "", rest
