"""Pooling endpoints, as vLLM serves them: POST /v1/embeddings (OpenAI's shape), /pooling,
/classify, /score + /v1/score, and /rerank + /v1/rerank + /v2/rerank (Jina's and Cohere's
shapes). Requests run through AsyncEngine.encode: prefill-only requests batched by the same
scheduler as generation.

`pooling_routes(run)` returns the Litestar handlers; app.py registers them.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import numpy as np
from litestar import Request, Response, post

from fastlm.pooling import Pooler, PoolingParams
from fastlm.server.errors import APIError
from fastlm.server.protocol import encode
from fastlm.server.serving import Context

Handler = Callable[[Context, Request[Any, Any, Any], bytes], Awaitable[Response[Any]]]


def _body(raw: bytes) -> dict[str, Any]:
    try:
        data = msgspec.json.decode(raw)
    except msgspec.DecodeError as e:
        raise APIError(f"Invalid JSON body: {e}", 400, None, "invalid_json") from e
    if not isinstance(data, dict):
        raise APIError("The request body must be a JSON object", 400, None, "invalid_type")
    return data


def _pooler(ctx: Context, endpoint: str) -> Pooler:
    pooler = ctx.runtime.pooler
    if pooler is None:
        raise APIError(
            f"{endpoint} needs a pooling model; this model ({ctx.runtime.engine.architecture}) "
            "serves the generate task (/v1/completions, /v1/chat/completions)",
            400,
            None,
            "wrong_task",
        )
    return pooler


def _task(pooler: Pooler, task: str, endpoint: str) -> str:
    try:
        return pooler.resolve_task(task)
    except ValueError as e:
        raise APIError(f"{endpoint}: {e}", 400, None, "wrong_task") from e


def _opt_int(body: dict[str, Any], name: str) -> int | None:
    v = body.get(name)
    if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
        raise APIError(f"{name} must be an integer", 400, name, "invalid_type")
    return v


def _opt_bool(body: dict[str, Any], *names: str) -> bool | None:
    """The first of `names` present (vLLM's aliases), which must be a JSON boolean."""
    for name in names:
        v = body.get(name)
        if v is None:
            continue
        if not isinstance(v, bool):
            raise APIError(f"{name} must be a boolean", 400, name, "invalid_type")
        return v
    return None


def _params(body: dict[str, Any]) -> PoolingParams:
    return PoolingParams(
        truncate_prompt_tokens=_opt_int(body, "truncate_prompt_tokens"),
        dimensions=_opt_int(body, "dimensions"),
        normalize=_opt_bool(body, "normalize"),
        activation=_opt_bool(body, "activation", "use_activation"),
    )


def _inputs(
    ctx: Context, pooler: Pooler, body: dict[str, Any], params: PoolingParams, name: str = "input"
) -> list[tuple[list[int], int]]:
    """str | list[str] | list[int] | list[list[int]] | messages -> (tokens, boundary) list."""
    trunc = params.truncate_prompt_tokens
    if "messages" in body and body.get(name) is None:
        messages = body["messages"]
        if not isinstance(messages, list) or not messages:
            raise APIError("messages must be a non-empty list", 400, "messages", "invalid_type")
        text = ctx.render_chat(
            list(messages),
            chat_template=body.get("chat_template"),
            add_generation_prompt=bool(body.get("add_generation_prompt", False)),
            continue_final_message=bool(body.get("continue_final_message", False)),
            documents=None,
            tools=None,
            chat_template_kwargs=body.get("chat_template_kwargs"),
        )
        ids = ctx.tokenizer.encode(text, add_special_tokens=False)
        return [(pooler.truncate_ids(ids, trunc), -1)]
    value = body.get(name)
    if isinstance(value, str):
        return [pooler.tokenize(value, truncate=trunc)]
    if not isinstance(value, list) or not value:
        raise APIError(
            f"{name} must be a string, a list of strings or token ids, or a list of token id "
            "lists (non-empty)",
            400,
            name,
            "invalid_type",
        )
    if all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return [(pooler.truncate_ids(ctx.check_token_ids(value, name), trunc), -1)]
    out: list[tuple[list[int], int]] = []
    for item in value:
        if isinstance(item, str):
            out.append(pooler.tokenize(item, truncate=trunc))
        elif isinstance(item, list) and item:
            out.append((pooler.truncate_ids(ctx.check_token_ids(item, name), trunc), -1))
        else:
            raise APIError(f"{name} items must be strings or token id lists", 400, name)
    return out


async def _run(
    ctx: Context,
    task: str,
    inputs: list[tuple[list[int], int]],
    params: PoolingParams,
    priority: int = 0,
) -> list[np.ndarray]:
    prefix = f"{task}-{uuid.uuid4().hex}"
    arrival = time.monotonic()
    try:
        outs = await asyncio.gather(
            *(
                ctx.engine.encode(f"{prefix}-{i}", tokens, task, params, boundary, priority)
                for i, (tokens, boundary) in enumerate(inputs)
            )
        )
    except ValueError as e:  # over-long prompts, unsupported dimensions, wrong task...
        raise APIError(str(e), 400, None, "invalid_request") from e
    for tokens, _ in inputs:
        ctx.metrics.observe_pooling(len(tokens), arrival)
    return [o.outputs.data for o in outs]


def _usage(inputs: list[tuple[list[int], int]]) -> dict[str, int]:
    n = sum(len(t) for t, _ in inputs)
    return {"prompt_tokens": n, "total_tokens": n}


def _json(obj: Any) -> Response[Any]:
    return Response(encode(obj), media_type="application/json")


async def create_embedding(
    ctx: Context, request: Request[Any, Any, Any], raw: bytes
) -> Response[Any]:
    body = _body(raw)
    model = ctx.check_model(body.get("model"))
    pooler = _pooler(ctx, "/v1/embeddings")
    task = _task(pooler, "embed", "/v1/embeddings")
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise APIError("encoding_format must be 'float' or 'base64'", 400, "encoding_format")
    params = _params(body)
    if params.dimensions is not None:
        try:
            pooler.check_dimensions(params.dimensions)
        except ValueError as e:
            raise APIError(str(e), 400, "dimensions", "invalid_value") from e
    inputs = _inputs(ctx, pooler, body, params)
    vectors = await _run(ctx, task, inputs, params, int(body.get("priority", 0) or 0))
    data = []
    for i, v in enumerate(vectors):
        emb: Any = (
            base64.b64encode(v.astype("<f4").tobytes()).decode() if fmt == "base64" else v.tolist()
        )
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return _json({"object": "list", "data": data, "model": model, "usage": _usage(inputs)})


async def create_pooling(
    ctx: Context, request: Request[Any, Any, Any], raw: bytes
) -> Response[Any]:
    body = _body(raw)
    model = ctx.check_model(body.get("model"))
    pooler = _pooler(ctx, "/pooling")
    task = _task(pooler, str(body.get("task") or pooler.config.default_task), "/pooling")
    params = _params(body)
    inputs = _inputs(ctx, pooler, body, params)
    outs = await _run(ctx, task, inputs, params, int(body.get("priority", 0) or 0))
    data = [{"index": i, "object": "pooling", "data": v.tolist()} for i, v in enumerate(outs)]
    return _json(
        {
            "id": f"pool-{uuid.uuid4().hex}",
            "object": "list",
            "created": int(time.time()),
            "model": model,
            "data": data,
            "usage": _usage(inputs),
        }
    )


async def create_classify(
    ctx: Context, request: Request[Any, Any, Any], raw: bytes
) -> Response[Any]:
    body = _body(raw)
    model = ctx.check_model(body.get("model"))
    pooler = _pooler(ctx, "/classify")
    task = _task(pooler, "classify", "/classify")
    params = _params(body)
    inputs = _inputs(ctx, pooler, body, params)
    outs = await _run(ctx, task, inputs, params, int(body.get("priority", 0) or 0))
    labels = pooler.config.id2label
    data = []
    for i, p in enumerate(outs):
        best = int(np.argmax(p))
        data.append(
            {
                "index": i,
                "label": labels.get(best, f"LABEL_{best}"),
                "probs": p.tolist(),
                "num_classes": int(p.shape[-1]),
            }
        )
    return _json(
        {
            "id": f"classify-{uuid.uuid4().hex}",
            "object": "list",
            "created": int(time.time()),
            "model": model,
            "data": data,
            "usage": _usage(inputs),
        }
    )


def _texts(value: Any, name: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        out = []
        for v in value:
            if isinstance(v, dict) and isinstance(v.get("text"), str):
                out.append(v["text"])
            elif isinstance(v, str):
                out.append(v)
            else:
                raise APIError(f"{name} items must be strings or {{text}} objects", 400, name)
        return out
    raise APIError(f"{name} must be a string or a non-empty list", 400, name, "invalid_type")


async def _scores(
    ctx: Context, pooler: Pooler, firsts: list[str], seconds: list[str], params: PoolingParams
) -> tuple[list[float], dict[str, int]]:
    """Pair scores (after the 1:N broadcast): cross-encoder probability or embedding cosine."""
    trunc = params.truncate_prompt_tokens
    try:
        if pooler.config.is_cross_encoder:
            inputs = [pooler.tokenize(a, b, trunc) for a, b in zip(firsts, seconds, strict=True)]
            outs = await _run(ctx, _task(pooler, "score", "score"), inputs, params)
            return [float(o[0]) for o in outs], _usage(inputs)
        texts = list(dict.fromkeys(firsts + seconds))
        inputs = [pooler.tokenize(t, truncate=trunc) for t in texts]
    except ValueError as e:
        raise APIError(str(e), 400, None, "invalid_request") from e
    vecs = dict(
        zip(texts, await _run(ctx, _task(pooler, "embed", "score"), inputs, params), strict=True)
    )
    scores = []
    for a, b in zip(firsts, seconds, strict=True):
        va, vb = vecs[a], vecs[b]
        scores.append(float(va @ vb / max(np.linalg.norm(va) * np.linalg.norm(vb), 1e-12)))
    return scores, _usage(inputs)


async def create_score(ctx: Context, request: Request[Any, Any, Any], raw: bytes) -> Response[Any]:
    body = _body(raw)
    model = ctx.check_model(body.get("model"))
    pooler = _pooler(ctx, "/score")
    _task(pooler, "score", "/score")
    firsts = _texts(body.get("text_1", body.get("queries")), "text_1")
    seconds = _texts(body.get("text_2", body.get("documents")), "text_2")
    if len(firsts) == 1:
        firsts = firsts * len(seconds)
    if len(firsts) != len(seconds):
        raise APIError(
            "text_1 and text_2 must have the same length, or text_1 a single item", 400, "text_1"
        )
    scores, usage = await _scores(ctx, pooler, firsts, seconds, _params(body))
    data = [{"index": i, "object": "score", "score": s} for i, s in enumerate(scores)]
    return _json(
        {
            "id": f"score-{uuid.uuid4().hex}",
            "object": "list",
            "created": int(time.time()),
            "model": model,
            "data": data,
            "usage": usage,
        }
    )


async def create_rerank(ctx: Context, request: Request[Any, Any, Any], raw: bytes) -> Response[Any]:
    body = _body(raw)
    model = ctx.check_model(body.get("model"))
    pooler = _pooler(ctx, "/rerank")
    _task(pooler, "score", "/rerank")
    query = body.get("query")
    if not isinstance(query, str):
        raise APIError("query must be a string", 400, "query", "invalid_type")
    docs = _texts(body.get("documents"), "documents")
    top_n = _opt_int(body, "top_n")
    if top_n is not None and top_n < 0:
        raise APIError("top_n must be non-negative", 400, "top_n", "invalid_value")
    return_documents = bool(body.get("return_documents", True))
    scores, usage = await _scores(ctx, pooler, [query] * len(docs), docs, _params(body))
    order = sorted(range(len(docs)), key=lambda i: -scores[i])
    if top_n:
        order = order[:top_n]
    results = []
    for i in order:
        item: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
        if return_documents:
            item["document"] = {"text": docs[i]}
        results.append(item)
    return _json(
        {
            "id": f"rerank-{uuid.uuid4().hex}",
            "model": model,
            "usage": usage,
            "results": results,
            "meta": {"billed_units": {"search_units": 1}},
        }
    )


def pooling_routes(
    run: Callable[[Handler, Request[Any, Any, Any]], Awaitable[Any]],
) -> list[Any]:
    """The pooling route handlers; `run` is app.py's wrapper (engine readiness, body read)."""

    @post("/v1/embeddings", status_code=200)
    async def embeddings(request: Request[Any, Any, Any]) -> Any:
        return await run(create_embedding, request)

    @post("/pooling", status_code=200)
    async def pooling(request: Request[Any, Any, Any]) -> Any:
        return await run(create_pooling, request)

    @post("/classify", status_code=200)
    async def classify(request: Request[Any, Any, Any]) -> Any:
        return await run(create_classify, request)

    @post(["/score", "/v1/score"], status_code=200)
    async def score(request: Request[Any, Any, Any]) -> Any:
        return await run(create_score, request)

    @post(["/rerank", "/v1/rerank", "/v2/rerank"], status_code=200)
    async def rerank(request: Request[Any, Any, Any]) -> Any:
        return await run(create_rerank, request)

    return [embeddings, pooling, classify, score, rerank]
