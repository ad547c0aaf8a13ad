"""Turns engine deltas into RequestOutputs: detokenization, stop strings, logprobs, n > 1.

Shared by the offline LLM and the async server engine. A request with n > 1 fans out into n
engine requests ("{i}_{request_id}") that share the prompt's KV blocks through prefix caching.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastlm import _core
from fastlm.detokenizer import IncrementalDetokenizer, StopChecker
from fastlm.outputs import CompletionOutput, Logprob, PromptLogprobs, RequestOutput
from fastlm.sampling_params import RequestOutputKind, SamplingParams
from fastlm.structured_outputs import GrammarMatcher

# Pushes a constrained engine request's token bitmask: (engine id, output step, mask bytes).
PushMask = Callable[[str, int, bytes], Any]


def child_request_id(index: int, request_id: str, n: int) -> str:
    return request_id if n == 1 else f"{index}_{request_id}"


@dataclass
class _Child:
    index: int
    engine_id: str
    detokenizer: IncrementalDetokenizer | None
    stop_checker: StopChecker
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list[dict[int, Logprob]] | None = None
    cumulative_logprob: float | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    # What the previous outputs handed out (RequestOutputKind.DELTA): text since then, and the
    # counts of token ids / logprobs already sent.
    new_text: str = ""
    num_tokens_sent: int = 0
    num_logprobs_sent: int = 0
    grammar: GrammarMatcher | None = None  # structured outputs


@dataclass
class _RequestState:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    children: list[_Child]
    prompt_logprobs: PromptLogprobs | None = None
    num_cached_tokens: int = 0
    error: str | None = None

    @property
    def finished(self) -> bool:
        return all(c.finish_reason is not None for c in self.children)


class OutputProcessor:
    def __init__(
        self, tokenizer: Any, eos_token_ids: list[int], push_mask: PushMask | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.eos_token_ids = set(eos_token_ids)
        self.push_mask = push_mask
        self._requests: dict[str, _RequestState] = {}
        self._by_engine_id: dict[str, tuple[_RequestState, _Child]] = {}
        # Requests that failed alone (a grammar error, a late grammar mask): request id ->
        # message, drained by the caller with take_errors().
        self._errors: dict[str, str] = {}

    def add_request(
        self,
        request_id: str,
        prompt: str | None,
        prompt_token_ids: list[int],
        params: SamplingParams,
        grammars: list[GrammarMatcher] | None = None,
    ) -> list[str]:
        """Registers a request; returns the engine request ids to submit (one per child).
        `grammars`: one matcher per child for a constrained request."""
        if request_id in self._requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        children = []
        for i in range(params.n):
            detok = None
            if params.detokenize:
                detok = IncrementalDetokenizer(
                    self.tokenizer,
                    prompt_token_ids,
                    skip_special_tokens=params.skip_special_tokens,
                    spaces_between_special_tokens=params.spaces_between_special_tokens,
                )
            children.append(
                _Child(
                    index=i,
                    engine_id=child_request_id(i, request_id, params.n),
                    detokenizer=detok,
                    stop_checker=StopChecker(
                        params.stop if isinstance(params.stop, list) else None,
                        params.include_stop_str_in_output,
                    ),
                    logprobs=[] if params.logprobs is not None else None,
                    cumulative_logprob=0.0 if params.logprobs is not None else None,
                    grammar=grammars[i] if grammars else None,
                )
            )
        state = _RequestState(request_id, prompt, list(prompt_token_ids), params, children)
        self._requests[request_id] = state
        for c in children:
            self._by_engine_id[c.engine_id] = (state, c)
        return [c.engine_id for c in children]

    def push_first_mask(self, engine_id: str) -> None:
        """Pushes a just-added constrained child's mask for its first token."""
        entry = self._by_engine_id.get(engine_id)
        if entry is None or entry[1].grammar is None or self.push_mask is None:
            return
        self.push_mask(engine_id, 0, entry[1].grammar.bitmask())

    def take_errors(self) -> dict[str, str]:
        """Requests that failed alone since the last call: request id -> message."""
        errors, self._errors = self._errors, {}
        return errors

    def engine_ids(self, request_id: str) -> list[str]:
        state = self._requests.get(request_id)
        return [c.engine_id for c in state.children] if state else []

    def _decoded(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def _to_logprob_dict(self, lp: Any) -> dict[int, Logprob]:
        out: dict[int, Logprob] = {lp.token: Logprob(lp.logprob, lp.rank, self._decoded(lp.token))}
        for rank, (tok, value) in enumerate(lp.top, start=1):
            if tok not in out:
                out[tok] = Logprob(value, rank, self._decoded(tok))
        return out

    def process(self, deltas: list[Any]) -> tuple[list[RequestOutput], list[str]]:
        """Applies engine deltas. Returns the outputs of the requests they touched, and engine ids
        to abort (stop strings matched in Python)."""
        touched: dict[str, _RequestState] = {}
        to_abort: list[str] = []
        for d in deltas:
            entry = self._by_engine_id.get(d.request_id)
            if entry is None:
                continue
            state, child = entry
            touched[state.request_id] = state
            if d.error:
                state.error = d.error
                self._errors[state.request_id] = d.error
            state.num_cached_tokens = max(state.num_cached_tokens, d.num_cached_tokens)
            if d.prompt_logprobs:
                pl: PromptLogprobs = [None]
                pl.extend(self._to_logprob_dict(x) for x in d.prompt_logprobs)
                state.prompt_logprobs = pl
            if child.finish_reason is not None:
                continue  # already stopped by a stop string; the abort echo is ignored
            # The stop token's own text is not part of the output (vLLM) unless asked for.
            hide_last = (
                d.finished
                and d.stop_token is not None
                and not state.params.include_stop_str_in_output
            )
            self._apply_tokens(
                child, state.params, list(d.new_token_ids), list(d.logprobs), hide_last
            )
            if child.finish_reason is None and d.finished:
                self._finish(child, state.params, d)
            elif child.finish_reason is not None and not d.finished:
                to_abort.append(child.engine_id)
            elif child.grammar is not None and not d.finished:
                self._advance_grammar(state, child, list(d.new_token_ids), to_abort)
        outputs = [
            self._make_output(s)
            for s in touched.values()
            if s.finished or s.params.output_kind != RequestOutputKind.FINAL_ONLY
        ]
        for s in touched.values():
            if s.finished:
                self._drop(s)
        return outputs, to_abort

    def _advance_grammar(
        self, state: _RequestState, child: _Child, tokens: list[int], to_abort: list[str]
    ) -> None:
        """Feeds the new tokens to the child's grammar and pushes its next mask: this runs
        while the engine's next forward does."""
        assert child.grammar is not None
        error = child.grammar.consume(tokens)
        if error is None and self.push_mask is not None:
            self.push_mask(child.engine_id, child.grammar.num_tokens, child.grammar.bitmask())
            return
        if error is not None:
            state.error = f"structured outputs: {error}"
            self._errors[state.request_id] = state.error
            child.finish_reason = "abort"
            to_abort.append(child.engine_id)

    def _apply_tokens(
        self,
        child: _Child,
        params: SamplingParams,
        tokens: list[int],
        logprobs: list[Any],
        hide_last: bool,
    ) -> None:
        for i, tok in enumerate(tokens):
            child.token_ids.append(tok)
            if child.logprobs is not None and i < len(logprobs):
                lp = logprobs[i]
                child.logprobs.append(self._to_logprob_dict(lp))
                assert child.cumulative_logprob is not None
                child.cumulative_logprob += lp.logprob
            if child.detokenizer is None or (hide_last and i == len(tokens) - 1):
                continue
            child.detokenizer.add_tokens([tok])
            delta, stopped, matched = child.stop_checker.update(child.detokenizer.output_text)
            child.text += delta
            child.new_text += delta
            if stopped:
                child.finish_reason = "stop"
                child.stop_reason = matched
                # Tokens after the stop string are not part of the output.
                return

    def _finish(self, child: _Child, params: SamplingParams, d: Any) -> None:
        child.finish_reason = d.finish_reason
        if d.stop_token is not None and d.stop_token not in self.eos_token_ids:
            child.stop_reason = int(d.stop_token)
        if child.detokenizer is not None:
            child.detokenizer.flush()
            delta = child.stop_checker.flush(child.detokenizer.output_text)
            child.text += delta
            child.new_text += delta

    def _make_output(self, state: _RequestState) -> RequestOutput:
        delta = state.params.output_kind == RequestOutputKind.DELTA
        outs = []
        for c in state.children:
            if delta:  # O(new tokens): only what the previous output did not carry
                token_ids = c.token_ids[c.num_tokens_sent :]
                logprobs = c.logprobs[c.num_logprobs_sent :] if c.logprobs is not None else None
                text = c.new_text
            else:
                token_ids = list(c.token_ids)
                logprobs = list(c.logprobs) if c.logprobs is not None else None
                text = c.text
            c.new_text = ""
            c.num_tokens_sent = len(c.token_ids)
            c.num_logprobs_sent = len(c.logprobs) if c.logprobs is not None else 0
            outs.append(
                CompletionOutput(
                    index=c.index,
                    text=text,
                    token_ids=token_ids,
                    cumulative_logprob=c.cumulative_logprob,
                    logprobs=logprobs,
                    finish_reason=c.finish_reason,
                    stop_reason=c.stop_reason,
                )
            )
        return RequestOutput(
            request_id=state.request_id,
            prompt=state.prompt,
            prompt_token_ids=state.prompt_token_ids,
            prompt_logprobs=state.prompt_logprobs,
            outputs=outs,
            finished=state.finished,
            num_cached_tokens=state.num_cached_tokens,
        )

    def _drop(self, state: _RequestState) -> None:
        self._requests.pop(state.request_id, None)
        for c in state.children:
            self._by_engine_id.pop(c.engine_id, None)

    def abort(self, request_id: str) -> list[str]:
        state = self._requests.pop(request_id, None)
        if state is None:
            return []
        for c in state.children:
            self._by_engine_id.pop(c.engine_id, None)
        return [c.engine_id for c in state.children]

    def has_unfinished(self) -> bool:
        return bool(self._requests)


def core_params_for_children(params: SamplingParams, max_tokens: int) -> list[_core.SamplingParams]:
    """Engine params of each child: seeded children get distinct, reproducible seeds."""
    out = []
    for i in range(params.n):
        seed = None if params.seed is None else params.seed + i
        out.append(params.to_core(max_tokens, seed=seed))
    return out


class DeltaAccumulator:
    """Rebuilds the cumulative RequestOutput from a request's DELTA outputs in O(total) time
    (text pieces joined once, lists extended)."""

    def __init__(self) -> None:
        self._last: RequestOutput | None = None
        self._texts: dict[int, list[str]] = {}
        self._tokens: dict[int, list[int]] = {}
        self._logprobs: dict[int, list[dict[int, Logprob]] | None] = {}

    def add(self, out: RequestOutput) -> None:
        self._last = out
        for o in out.outputs:
            self._texts.setdefault(o.index, []).append(o.text)
            self._tokens.setdefault(o.index, []).extend(o.token_ids)
            if o.logprobs is not None:
                acc = self._logprobs.get(o.index)
                if acc is None:
                    acc = self._logprobs[o.index] = []
                acc.extend(o.logprobs)

    def result(self) -> RequestOutput | None:
        last = self._last
        if last is None:
            return None
        outs = [
            CompletionOutput(
                index=o.index,
                text="".join(self._texts.get(o.index, [])),
                token_ids=self._tokens.get(o.index, []),
                cumulative_logprob=o.cumulative_logprob,
                logprobs=self._logprobs.get(o.index) if o.logprobs is not None else None,
                finish_reason=o.finish_reason,
                stop_reason=o.stop_reason,
            )
            for o in last.outputs
        ]
        return RequestOutput(
            request_id=last.request_id,
            prompt=last.prompt,
            prompt_token_ids=last.prompt_token_ids,
            prompt_logprobs=last.prompt_logprobs,
            outputs=outs,
            finished=last.finished,
            num_cached_tokens=last.num_cached_tokens,
            metrics=last.metrics,
        )


def merge_deltas(a: RequestOutput, b: RequestOutput) -> RequestOutput:
    """Two consecutive DELTA outputs of one request as one (b's state, both deltas)."""
    by_index = {o.index: o for o in a.outputs}
    outs = []
    for o in b.outputs:
        prev = by_index.get(o.index)
        if prev is None:
            outs.append(o)
            continue
        logprobs = None
        if o.logprobs is not None or prev.logprobs is not None:
            logprobs = (prev.logprobs or []) + (o.logprobs or [])
        outs.append(
            CompletionOutput(
                index=o.index,
                text=prev.text + o.text,
                token_ids=list(prev.token_ids) + list(o.token_ids),
                cumulative_logprob=o.cumulative_logprob,
                logprobs=logprobs,
                finish_reason=o.finish_reason,
                stop_reason=o.stop_reason,
            )
        )
    return RequestOutput(
        request_id=b.request_id,
        prompt=b.prompt,
        prompt_token_ids=b.prompt_token_ids,
        prompt_logprobs=b.prompt_logprobs if b.prompt_logprobs is not None else a.prompt_logprobs,
        outputs=outs,
        finished=b.finished,
        num_cached_tokens=b.num_cached_tokens,
        metrics=b.metrics,
    )
