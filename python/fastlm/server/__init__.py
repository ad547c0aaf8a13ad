"""fastlm's OpenAI-compatible HTTP server (Litestar + msgspec, served by uvicorn)."""

from __future__ import annotations

__all__ = ["build_app", "main"]


def __getattr__(name: str):  # noqa: ANN202 - lazy: importing the package loads no web stack
    if name == "build_app":
        from fastlm.server.app import build_app

        return build_app
    if name == "main":
        from fastlm.server.cli import main

        return main
    raise AttributeError(name)
