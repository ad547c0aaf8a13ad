"""Run the server in a background thread on 127.0.0.1 (tests, benchmarks, notebooks)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import uvicorn

from fastlm.async_engine import AsyncEngine
from fastlm.runtime import EngineArgs
from fastlm.server.app import CorsOptions, build_app, with_root_path
from fastlm.server.serving import ServerConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerThread:
    """uvicorn serving `build_app(...)` in its own thread and event loop.

    Pass `engine` (an AsyncEngine not yet started) to reuse one loaded model across servers:
    the engine's C++ loop is stopped when the server stops, and can be started again.
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        engine: AsyncEngine | None = None,
        engine_args: EngineArgs | None = None,
        cors: CorsOptions | None = None,
        root_path: str = "",
        port: int | None = None,
        max_body_size: int = 16 * 2**20,
        log_level: str = "warning",
    ) -> None:
        self.port = port or free_port()
        self.root_path = root_path
        self.app = build_app(
            config, engine=engine, engine_args=engine_args, cors=cors, max_body_size=max_body_size
        )
        self.server = uvicorn.Server(
            uvicorn.Config(
                with_root_path(self.app, root_path),
                host="127.0.0.1",
                port=self.port,
                log_level=log_level,
                access_log=False,
                root_path=root_path,
                lifespan="on",
                timeout_graceful_shutdown=2,
            )
        )
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="fastlm-server")
        self.error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.root_path}"

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        try:
            loop.run_until_complete(self.server.serve())
        except BaseException as e:  # noqa: BLE001 - surfaced by start()
            self.error = e
        finally:
            loop.close()

    def start(self, timeout: float = 60.0, wait_ready: bool = True) -> ServerThread:
        import urllib.error
        import urllib.request

        self._thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.error is not None or not self._thread.is_alive():
                raise RuntimeError(f"the server thread died: {self.error!r}")
            if self.server.started:
                if not wait_ready:
                    return self
                try:
                    with urllib.request.urlopen(f"{self.url}/health", timeout=5) as r:
                        if r.status == 200:
                            return self
                except urllib.error.HTTPError as e:
                    if e.code != 503:
                        raise
                except OSError:
                    pass
            time.sleep(0.02)
        raise TimeoutError(f"the server did not become ready in {timeout}s")

    def call(self, fn: Any) -> Any:
        """Runs fn() on the server's event loop and returns its result."""
        assert self.loop is not None
        done = threading.Event()
        box: list[Any] = []

        def run() -> None:
            try:
                box.append(fn())
            finally:
                done.set()

        self.loop.call_soon_threadsafe(run)
        done.wait(10)
        return box[0] if box else None

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(30)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
