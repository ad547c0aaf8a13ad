"""AsyncEngine: the asyncio bridge to the C++ engine loop.

The engine thread belongs to C++. Requests go in through `Engine.add_request` / `abort`;
outputs come back through `poll_outputs`, woken by the engine's eventfd registered with
`loop.add_reader`, so no Python thread polls.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastlm.output_processor import merge_deltas
from fastlm.outputs import RequestOutput
from fastlm.pooling import PoolingParams
from fastlm.pooling_outputs import PoolingOutput, PoolingRequestOutput
from fastlm.runtime import EngineArgs, Runtime
from fastlm.sampling_params import RequestOutputKind, SamplingParams

logger = logging.getLogger("fastlm.engine")


class EngineDeadError(RuntimeError):
    pass


class RequestFailedError(RuntimeError):
    """One request failed while running (e.g. its grammar could not continue)."""


class AsyncEngine:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.engine = runtime.engine
        self.tokenizer = runtime.tokenizer
        self._queues: dict[str, asyncio.Queue[RequestOutput | BaseException]] = {}
        # Pooling requests: one finished delta each (it carries the pooled output).
        self._pooling: dict[str, asyncio.Future[Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.errored: str | None = None
        # Called once, on the event loop, when the engine dies (the server exits non-zero).
        self.on_dead: Callable[[str], None] | None = None

    @classmethod
    def from_args(cls, args: EngineArgs) -> AsyncEngine:
        return cls(Runtime(args))

    @property
    def max_model_len(self) -> int:
        return self.runtime.max_model_len

    def start(self) -> None:
        """Starts the C++ loop and watches its eventfd. Call from the running event loop."""
        self._loop = asyncio.get_running_loop()
        self.engine.start_loop()
        self._loop.add_reader(self.engine.output_fd, self._on_outputs)

    def shutdown(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.engine.output_fd)
            self._loop = None
        self.engine.stop_loop()

    def _fail_all(self, error: str) -> None:
        """The engine loop died: every request in flight fails, and so does every new one."""
        if self.errored is None:
            self.errored = error
            logger.error("engine failed: %s", error)
            if self.on_dead is not None:
                self.on_dead(error)
        for q in self._queues.values():
            q.put_nowait(EngineDeadError(error))
        for fut in self._pooling.values():
            if not fut.done():
                fut.set_exception(EngineDeadError(error))

    def _on_outputs(self) -> None:
        try:
            deltas = self.engine.poll_outputs()
        except RuntimeError as e:
            self._fail_all(str(e))
            return
        # A failed step finishes every live request with an error: the engine is dead. Other
        # errors concern one request (its grammar mask came too late).
        failed = next((d.error for d in deltas if d.error), None)
        if failed and self.engine.failed:
            self._fail_all(f"engine failed: {failed}")
            return
        for d in deltas:
            pending = self._pooling.get(d.request_id)
            if pending is not None and d.finished and not pending.done():
                pending.set_result(d)
        outputs, to_abort = self.runtime.processor.process(deltas)
        for eid in to_abort:
            self.engine.abort(eid)
        errors = self.runtime.processor.take_errors()
        for out in outputs:
            queue = self._queues.get(out.request_id)
            if queue is None:
                continue
            error = errors.get(out.request_id)
            queue.put_nowait(RequestFailedError(error) if error else out)

    async def generate(
        self,
        request_id: str,
        prompt: str | None,
        prompt_token_ids: list[int],
        params: SamplingParams,
        priority: int = 0,
        cache_salt: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Yields RequestOutputs (cumulative, or deltas with params.output_kind DELTA) until the
        request finishes. Leaving the iterator early (client gone, cancellation) aborts the
        request and frees its KV blocks."""

        def submit() -> None:
            self.runtime.add_request(
                request_id, prompt, prompt_token_ids, params, priority, cache_salt
            )

        async for out in self._stream(request_id, params, submit):
            yield out

    async def transcribe(
        self,
        request_id: str,
        features: Any,
        decoder_prompt: list[int],
        params: SamplingParams,
        suppress: tuple[list[int], list[int]],
        priority: int = 0,
        timestamp_begin: int = -1,
    ) -> AsyncIterator[RequestOutput]:
        """A speech-to-text request (Runtime.add_audio_request), streamed like generate()."""

        def submit() -> None:
            self.runtime.add_audio_request(
                request_id, features, decoder_prompt, params, suppress, priority, timestamp_begin
            )

        async for out in self._stream(request_id, params, submit):
            yield out

    async def _stream(
        self, request_id: str, params: SamplingParams, submit: Callable[[], None]
    ) -> AsyncIterator[RequestOutput]:
        if self.errored is not None:
            raise EngineDeadError(self.errored)
        q: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        self._queues[request_id] = q
        delta = params.output_kind == RequestOutputKind.DELTA
        finished = False
        try:
            submit()
            while True:
                item = await q.get()
                if isinstance(item, BaseException):
                    raise item
                # Coalesce what is already queued: the client wants the latest state (deltas
                # are merged, cumulative outputs superseded).
                while not q.empty() and not item.finished:
                    nxt = q.get_nowait()
                    if isinstance(nxt, BaseException):
                        raise nxt
                    item = merge_deltas(item, nxt) if delta else nxt
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            self._queues.pop(request_id, None)
            if not finished:
                self.runtime.abort(request_id)

    async def encode(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        task: str,
        params: PoolingParams | None = None,
        token_type_boundary: int = -1,
        priority: int = 0,
    ) -> PoolingRequestOutput:
        """Runs one pooling request (task embed | classify | score | encode | token_embed) and
        returns its pooled output; cancellation aborts it. Raises ValueError when the model is
        not a pooling model or does not support the task."""
        if self.errored is not None:
            raise EngineDeadError(self.errored)
        pooler = self.runtime.pooler
        if pooler is None:
            raise ValueError(
                f"model {self.engine.architecture} is a generative model; the {task} task needs "
                "a pooling model"
            )
        task = pooler.resolve_task(task)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pooling[request_id] = fut
        done = False
        try:
            pooler.add_request(
                request_id, prompt_token_ids, task, params, token_type_boundary, priority
            )
            delta = await fut
            done = True
            data = pooler.finish(delta, params)
            return PoolingRequestOutput(request_id, PoolingOutput(data), prompt_token_ids)
        finally:
            self._pooling.pop(request_id, None)
            if not done:
                self.engine.abort(request_id)

    def abort(self, request_id: str) -> None:
        self.runtime.abort(request_id)

    def stats(self) -> Any:
        return self.engine.stats()
