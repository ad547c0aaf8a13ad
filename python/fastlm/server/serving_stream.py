"""Streaming and running requests: disconnect handling, merging engine streams, engine errors
as API errors, and server-sent events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import Any, TypeVar

from litestar import Request

from fastlm.async_engine import EngineDeadError, RequestFailedError
from fastlm.outputs import RequestOutput
from fastlm.server.errors import APIError

T = TypeVar("T")


class ClientDisconnected(Exception):
    pass


async def _watch_disconnect(request: Request[Any, Any, Any]) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(request: Request[Any, Any, Any], aw: Awaitable[T]) -> T:
    """Awaits `aw` unless the client goes away first; then cancels it (which aborts its engine
    requests) and raises ClientDisconnected."""
    task = asyncio.ensure_future(aw)
    watcher = asyncio.ensure_future(_watch_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    try:
        await task
    except BaseException:  # noqa: BLE001 - the cancellation we asked for, or the task's own error
        pass
    raise ClientDisconnected()


async def merge_streams(
    streams: list[AsyncIterator[RequestOutput]],
) -> AsyncGenerator[tuple[int, RequestOutput], None]:
    """Interleaves several engine streams as (stream index, output); closing this closes all."""
    if len(streams) == 1:
        try:
            async for out in streams[0]:
                yield 0, out
        finally:
            await streams[0].aclose()  # type: ignore[attr-defined]
        return
    queue: asyncio.Queue[tuple[int, RequestOutput | BaseException | None]] = asyncio.Queue()

    async def pump(i: int, it: AsyncIterator[RequestOutput]) -> None:
        try:
            async for out in it:
                queue.put_nowait((i, out))
        except Exception as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            queue.put_nowait((i, e))
        finally:
            await it.aclose()  # type: ignore[attr-defined]
            queue.put_nowait((i, None))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    remaining = len(tasks)
    try:
        while remaining:
            i, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# What a running request may raise: refused at admission, the engine died, or it failed alone.
ENGINE_ERRORS = (ValueError, EngineDeadError, RequestFailedError)


def engine_error(e: Exception) -> APIError:
    """An error raised by the engine while admitting or running a request."""
    if isinstance(e, EngineDeadError):  # vLLM's EngineDeadError: a 500, the server exits
        return APIError(f"The engine failed: {e}", 500, None, "engine_dead")
    if isinstance(e, RequestFailedError):
        return APIError(f"The request failed: {e}", 500, None, "request_failed")
    return APIError(str(e), 400, None, None)


def now() -> int:
    return int(time.time())


def sse(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
