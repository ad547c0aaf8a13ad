"""The Litestar application: routes, auth, request-id headers, CORS and engine lifecycle.

`build_app` returns an app that is listening-ready at once: the engine is built in a worker
thread on startup (its constructor releases the GIL) and /health answers 503 until it is up.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, get, post, route
from litestar.config.cors import CORSConfig
from litestar.datastructures import MutableScopeHeaders
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.response import Stream

import fastlm
from fastlm.async_engine import AsyncEngine
from fastlm.runtime import EngineArgs, Runtime
from fastlm.server import protocol
from fastlm.server.errors import EXCEPTION_HANDLERS, APIError, error_response
from fastlm.server.metrics import CONTENT_TYPE, ServerMetrics
from fastlm.server.serving import ClientDisconnected, Context, ServerConfig
from fastlm.server.serving_audio import AudioRequest, audio_routes
from fastlm.server.serving_chat import create_chat_completion
from fastlm.server.serving_completion import create_completion
from fastlm.server.serving_pooling import POOLING_SCHEMAS, pooling_routes
from fastlm.server.serving_tokenize import detokenize, tokenize

logger = logging.getLogger("fastlm.server")


@dataclass
class CorsOptions:
    allowed_origins: list[str]
    allowed_methods: list[str]
    allowed_headers: list[str]
    allow_credentials: bool = False


class ServerState:
    """The engine once it is loaded; `ctx` is None until then."""

    def __init__(self) -> None:
        self.ctx: Context | None = None
        self.error: str | None = None
        self.load_task: asyncio.Task[None] | None = None
        self.started = time.monotonic()

    def require(self) -> Context:
        if self.ctx is None:
            if self.error is not None:
                raise APIError(f"The engine failed to load: {self.error}", 503)
            raise APIError("The model is still loading; retry shortly", 503, None, "loading")
        return self.ctx


def describe(ctx: Context, args: EngineArgs | None, elapsed: float) -> str:
    e = ctx.runtime.engine
    block_size = args.block_size if args else 16
    return (
        f"fastlm-server: model {ctx.config.served_model_names[0]!r} ({ctx.config.model_path}), "
        f"dtype {e.dtype}, max_model_len {ctx.max_model_len}, KV cache {e.num_blocks} blocks "
        f"x {block_size} tokens = {e.num_blocks * block_size} tokens "
        f"({e.kv_cache_bytes / 2**20:.0f} MiB); ready in {elapsed:.1f}s"
    )


def build_app(
    config: ServerConfig,
    *,
    engine_args: EngineArgs | None = None,
    engine: AsyncEngine | None = None,
    cors: CorsOptions | None = None,
    max_body_size: int = 16 * 2**20,
    on_load_failed: Callable[[BaseException], None] | None = None,
    on_engine_dead: Callable[[str], None] | None = None,
    stop_engine_on_shutdown: bool = True,
) -> Litestar:
    """An app serving `engine`, or an engine built from `engine_args` at startup."""
    if engine is None and engine_args is None:
        raise ValueError("build_app needs engine or engine_args")
    state = ServerState()
    metrics = ServerMetrics(config.served_model_names[0])
    api_keys = [k.encode() for k in config.api_keys]

    def ready(async_engine: AsyncEngine) -> None:
        async_engine.on_dead = on_engine_dead
        async_engine.start()
        state.ctx = Context(async_engine, config, metrics)
        metrics.bind_engine(async_engine.stats)
        print(
            describe(state.ctx, engine_args, time.monotonic() - state.started),
            file=sys.stderr,
            flush=True,
        )

    async def load() -> None:
        assert engine_args is not None
        try:
            runtime = await asyncio.to_thread(Runtime, engine_args)
            ready(AsyncEngine(runtime))
        except Exception as e:  # noqa: BLE001 - reported on /health and to the CLI
            state.error = f"{type(e).__name__}: {e}"
            logger.error("fastlm-server: the engine failed to load: %s", state.error)
            if on_load_failed is not None:
                on_load_failed(e)

    async def on_startup() -> None:
        state.started = time.monotonic()
        if engine is not None:
            ready(engine)
        else:
            state.load_task = asyncio.create_task(load())

    async def on_shutdown() -> None:
        if state.load_task is not None and not state.load_task.done():
            state.load_task.cancel()
        if state.ctx is not None and stop_engine_on_shutdown:
            state.ctx.engine.shutdown()
        elif state.ctx is not None:
            asyncio.get_running_loop().remove_reader(state.ctx.engine.engine.output_fd)

    # -- hooks ---------------------------------------------------------------------------
    async def before_request(request: Request[Any, Any, Any]) -> None:
        if not api_keys or request.method == "OPTIONS":
            return
        path = request.scope["path"]
        root = request.scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if not path.startswith("/v1"):
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        given = token.strip().encode()
        ok = scheme.lower() == "bearer" and any(hmac.compare_digest(given, k) for k in api_keys)
        if not ok:
            raise APIError(
                "Incorrect API key provided."
                if header
                else "Missing API key (Authorization: Bearer <key>).",
                401,
                None,
                "invalid_api_key",
            )

    async def before_send(message: Any, scope: Any) -> None:
        if not config.enable_request_id_headers or message["type"] != "http.response.start":
            return
        request_id = None
        for key, value in scope.get("headers", []):
            if key == b"x-request-id":
                request_id = value.decode("latin-1")
        headers = MutableScopeHeaders.from_message(message)
        headers["X-Request-Id"] = request_id or uuid.uuid4().hex

    # -- routes --------------------------------------------------------------------------
    def health_response() -> Response[Any]:
        ctx = state.ctx
        if ctx is not None and ctx.engine.errored is not None:  # dead, not starting: a 500
            return error_response(f"The engine failed: {ctx.engine.errored}", 500)
        if ctx is None:
            return error_response(f"Not ready: {state.error or 'loading'}", 503)
        return Response(b"", status_code=200, media_type="text/plain")

    @get("/health", sync_to_thread=False)
    def health() -> Response[Any]:
        return health_response()

    @route("/ping", http_method=["GET", "POST"], sync_to_thread=False)
    def ping() -> Response[Any]:
        return health_response()

    @get("/version", sync_to_thread=False)
    def version() -> dict[str, str]:
        return {"version": fastlm.__version__}

    @get("/v1/models", sync_to_thread=False)
    def models() -> Response[Any]:
        ctx = state.require()
        created = int(time.time())
        cards = [
            protocol.ModelCard(
                id=name,
                created=created,
                root=config.model_path,
                max_model_len=ctx.max_model_len,
                permission=[
                    protocol.ModelPermission(id=f"modelperm-{uuid.uuid4().hex}", created=created)
                ],
            )
            for name in config.served_model_names
        ]
        return Response(
            protocol.encode(protocol.ModelList(data=cards)), media_type="application/json"
        )

    async def run(
        fn: Callable[..., Any], request: Request[Any, Any, Any], admit: bool = True
    ) -> Response[Any] | Stream:
        """Runs an endpoint; `admit`: it queues engine work (the waiting-queue limit applies)."""
        ctx = state.require()
        if admit:
            ctx.check_overload()
        body = await request.body()
        try:
            return await fn(ctx, request, body)
        except ClientDisconnected:
            logger.info("client disconnected: %s aborted", request.url.path)
            return error_response("Client disconnected", 400, None, "client_disconnected")

    @post("/v1/completions", status_code=200)
    async def completions(request: Request[Any, Any, Any]) -> Response[Any] | Stream:
        return await run(create_completion, request)

    @post("/v1/chat/completions", status_code=200)
    async def chat_completions(request: Request[Any, Any, Any]) -> Response[Any] | Stream:
        return await run(create_chat_completion, request)

    @post("/tokenize", status_code=200)
    async def tokenize_route(request: Request[Any, Any, Any]) -> Response[Any] | Stream:
        return await run(tokenize, request, admit=False)

    @post("/detokenize", status_code=200)
    async def detokenize_route(request: Request[Any, Any, Any]) -> Response[Any] | Stream:
        return await run(detokenize, request, admit=False)

    @get("/metrics", sync_to_thread=False)
    def metrics_route() -> Response[Any]:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    doc = openapi_document()
    # /docs: Swagger UI (as vLLM's FastAPI app serves it) over the same document, through
    # Litestar's render plugin; the document comes from our Structs, not Litestar's generator.
    swagger = SwaggerRenderPlugin(path="/docs")
    schema = msgspec.json.decode(doc)

    @get("/openapi.json", sync_to_thread=False)
    def openapi() -> Response[Any]:
        return Response(doc, media_type="application/json")

    @get("/docs", sync_to_thread=False)
    def docs(request: Request[Any, Any, Any]) -> Response[Any]:
        return Response(swagger.render(request, schema), media_type="text/html")

    cors_config = None
    if cors is not None:
        cors_config = CORSConfig(
            allow_origins=cors.allowed_origins,
            allow_methods=cors.allowed_methods,  # type: ignore[arg-type]
            allow_headers=cors.allowed_headers,
            allow_credentials=cors.allow_credentials,
        )

    return Litestar(
        route_handlers=[
            health,
            ping,
            version,
            models,
            completions,
            chat_completions,
            tokenize_route,
            detokenize_route,
            metrics_route,
            openapi,
            docs,
            *pooling_routes(run),
            *audio_routes(run, config.max_audio_file_size),
        ],
        on_startup=[on_startup],
        on_shutdown=[on_shutdown],
        before_request=before_request,
        before_send=[before_send],
        exception_handlers=EXCEPTION_HANDLERS,
        cors_config=cors_config,
        openapi_config=None,
        request_max_body_size=max_body_size,
        logging_config=None,
    )


def with_root_path(app: Any, root_path: str) -> Any:
    """Serves `app` under `root_path` as Starlette does: requests whose path starts with the
    prefix (a proxy that keeps it) and requests without it (a proxy that strips it) both
    route; uvicorn's --root-path only sets scope["root_path"]."""
    root = root_path.rstrip("/")
    if not root:
        return app

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            path = scope.get("path", "")
            if path == root or path.startswith(root + "/"):
                scope = {**scope, "path": path[len(root) :] or "/", "root_path": root}
                raw = scope.get("raw_path")
                if raw is not None and raw.startswith(root.encode()):
                    scope["raw_path"] = raw[len(root) :] or b"/"
        await app(scope, receive, send)

    return asgi


def openapi_document() -> bytes:
    """The server's OpenAPI 3.1 document, from the msgspec request and response Structs."""
    p = protocol
    pooling = [kind for pair in POOLING_SCHEMAS.values() for kind in pair]
    kinds: list[Any] = [
        p.CompletionRequest,
        p.ChatCompletionRequest,
        p.TokenizeCompletionRequest,
        p.TokenizeChatRequest,
        p.DetokenizeRequest,
        p.CompletionResponse,
        p.ChatCompletionResponse,
        p.TokenizeResponse,
        p.DetokenizeResponse,
        p.ModelList,
        p.ErrorResponse,
        *dict.fromkeys(pooling),
    ]
    ref = "#/components/schemas/{name}"
    schemas, components = msgspec.json.schema_components(kinds, ref_template=ref)
    by_name = dict(zip([k.__name__ for k in kinds], schemas, strict=True))

    def json_body(name: str) -> dict[str, Any]:
        return {"content": {"application/json": {"schema": by_name[name]}}}

    errors = {
        str(code): {"description": text, **json_body("ErrorResponse")}
        for code, text in [
            (400, "Bad request"),
            (401, "Unauthorized"),
            (404, "Not found"),
            (413, "Body too large"),
            (415, "Unsupported media type"),
            (503, "Not ready, or overloaded (with Retry-After)"),
        ]
    }

    def op(req: str | None, resp: str, stream: bool = False) -> dict[str, Any]:
        ok = json_body(resp)
        if stream:
            ok["content"]["text/event-stream"] = {"schema": {"type": "string"}}
        out: dict[str, Any] = {"responses": {"200": {"description": "OK", **ok}, **errors}}
        if req is not None:
            out["requestBody"] = {"required": True, **json_body(req)}
        return out

    plain = {
        "responses": {
            "200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}},
            "503": errors["503"],
        }
    }

    def document(media_type: str, schema: dict[str, Any]) -> dict[str, Any]:
        ok = {"description": "OK", "content": {media_type: {"schema": schema}}}
        return {"responses": {"200": ok}}

    tokenize_op = op("TokenizeCompletionRequest", "TokenizeResponse")
    tokenize_op["requestBody"]["content"]["application/json"]["schema"] = {
        "anyOf": [by_name["TokenizeCompletionRequest"], by_name["TokenizeChatRequest"]]
    }
    # Audio routes take multipart/form-data (OpenAI's shape): the form's fields are AudioRequest's.
    audio_form = msgspec.json.schema(AudioRequest)
    audio_form = audio_form["$defs"]["AudioRequest"] if "$defs" in audio_form else audio_form
    audio_form["properties"]["file"] = {"type": "string", "format": "binary"}
    audio_ok = {
        "description": "OK: json / verbose_json objects, or text / srt / vtt as plain text",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"text": {"type": "string"}},
                    "required": ["text"],
                }
            },
            "text/plain": {"schema": {"type": "string"}},
            "text/event-stream": {"schema": {"type": "string"}},
        },
    }
    audio_op = {
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": audio_form}},
        },
        "responses": {"200": audio_ok, **errors},
    }
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "fastlm", "version": fastlm.__version__},
        "paths": {
            "/v1/completions": {"post": op("CompletionRequest", "CompletionResponse", True)},
            "/v1/chat/completions": {
                "post": op("ChatCompletionRequest", "ChatCompletionResponse", True)
            },
            "/tokenize": {"post": tokenize_op},
            "/detokenize": {"post": op("DetokenizeRequest", "DetokenizeResponse")},
            "/v1/models": {"get": op(None, "ModelList")},
            **{
                path: {"post": op(req.__name__, resp.__name__)}
                for path, (req, resp) in POOLING_SCHEMAS.items()
            },
            "/v1/audio/transcriptions": {"post": audio_op},
            "/v1/audio/translations": {"post": audio_op},
            "/health": {"get": plain},
            "/ping": {"get": plain},
            "/version": {
                "get": {
                    "responses": {
                        "200": {
                            "description": "OK",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {"version": {"type": "string"}},
                                        "required": ["version"],
                                    }
                                }
                            },
                        }
                    }
                }
            },
            "/metrics": {
                "get": {
                    "responses": {
                        "200": {
                            "description": "OK",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    }
                }
            },
            "/openapi.json": {"get": document("application/json", {"type": "object"})},
            "/docs": {"get": document("text/html", {"type": "string"})},
        },
        "components": {"schemas": components},
    }
    return msgspec.json.encode(doc)
