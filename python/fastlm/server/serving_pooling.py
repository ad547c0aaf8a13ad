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
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

import numpy as np
from litestar import Request, Response, post

from fastlm.pooling import Pooler, PoolingParams
from fastlm.server import protocol_pooling as pp
from fastlm.server.errors import APIError, NotSupportedError
from fastlm.server.protocol import encode
from fastlm.server.serving import (
    Context,
    base_request_id,
    decode_request_raw,
    engine_request_id,
    now,
)
from fastlm.server.serving_audio import refuse_speech_model

Handler = Callable[[Context, Request[Any, Any, Any], bytes], Awaitable[Response[Any]]]
R = TypeVar("R", bound=pp._PoolingCommon)


def _decode(
    ctx: Context, request: Request[Any, Any, Any], body: bytes, kind: type[R], route: str
) -> tuple[R, dict[str, Any], str]:
    """The request, its raw JSON object and the model name, after the checks every pooling
    route shares (content type, strict types, model, priority, truncation, unsupported
    fields)."""
    req, raw = decode_request_raw(body, request.headers.get("content-type"), kind, route)
    model = ctx.check_model(req.model)
    ctx.check_priority(req.priority)
    ctx.truncation_limit(req.truncate_prompt_tokens)
    if req.mm_processor_kwargs is not None:
        raise NotSupportedError("mm_processor_kwargs (multimodal inputs)", "mm_processor_kwargs")
    if req.cache_salt is not None and not req.cache_salt:
        raise APIError("cache_salt must be a non-empty string", 400, "cache_salt")
    # Pooling requests never read the prefix cache, so tenants are isolated whatever the salt.
    return req, raw, model


def _response_id(prefix: str, request: Request[Any, Any, Any], req: pp._PoolingCommon) -> str:
    return f"{prefix}-{base_request_id(request, req.request_id)}"


def _pooler(ctx: Context, endpoint: str) -> Pooler:
    refuse_speech_model(ctx, endpoint)
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
        raise APIError(f"{endpoint}: {e}", 400, "task", "wrong_task") from e


def _activation(req: Any) -> bool | None:
    """vLLM's `activation`, also spelled `use_activation` and (older) `softmax`."""
    given = {
        name: getattr(req, name)
        for name in ("activation", "use_activation", "softmax")
        if getattr(req, name) is not None
    }
    if len(set(given.values())) > 1:
        raise APIError(
            f"{' and '.join(given)} disagree; they are one option: give one of them",
            400,
            next(iter(given)),
        )
    return next(iter(given.values()), None)


def _params(req: Any) -> PoolingParams:
    return PoolingParams(
        truncate_prompt_tokens=req.truncate_prompt_tokens,
        dimensions=getattr(req, "dimensions", None),
        normalize=getattr(req, "normalize", None),
        activation=_activation(req) if hasattr(req, "activation") else None,
    )


def _inputs(
    ctx: Context,
    pooler: Pooler,
    req: pp._WithChat,
    raw: dict[str, Any],
    params: PoolingParams,
) -> list[tuple[list[int], int]]:
    """str | list[str] | list[int] | list[list[int]] | messages -> (tokens, boundary) list."""
    trunc = params.truncate_prompt_tokens
    value = req.input
    if req.messages is not None and value is None:
        if not req.messages:
            raise APIError("messages must be a non-empty list", 400, "messages", "invalid_type")
        text = ctx.render_chat(
            list(raw["messages"]),
            chat_template=req.chat_template,
            add_generation_prompt=req.add_generation_prompt,
            continue_final_message=req.continue_final_message,
            documents=None,
            tools=None,
            chat_template_kwargs=req.chat_template_kwargs,
        )
        ids = ctx.tokenizer.encode(text, add_special_tokens=bool(req.add_special_tokens))
        return [(pooler.truncate_ids(ids, trunc), -1)]
    if req.messages is not None:
        raise APIError("give either input or messages, not both", 400, "messages")
    special = req.add_special_tokens is not False
    if isinstance(value, str):
        return [pooler.tokenize(value, truncate=trunc, add_special_tokens=special)]
    if not isinstance(value, list) or not value:
        raise APIError(
            "input must be a string, a list of strings or token ids, or a list of token id "
            "lists (non-empty)",
            400,
            "input",
            "invalid_type",
        )
    if all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return [(pooler.truncate_ids(ctx.check_token_ids(value, "input"), trunc), -1)]
    out: list[tuple[list[int], int]] = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            out.append(pooler.tokenize(item, truncate=trunc, add_special_tokens=special))
        elif isinstance(item, list) and item:
            out.append((pooler.truncate_ids(ctx.check_token_ids(item, "input"), trunc), -1))
        else:
            raise APIError(
                "input items must be strings or non-empty token id lists", 400, f"input[{i}]"
            )
    return out


async def _run(
    ctx: Context,
    task: str,
    inputs: list[tuple[list[int], int]],
    params: PoolingParams,
    priority: int,
    request_id: str,
) -> list[np.ndarray]:
    prefix = engine_request_id(request_id)
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


def _usage(inputs: list[tuple[list[int], int]]) -> pp.PoolingUsage:
    n = sum(len(t) for t, _ in inputs)
    return pp.PoolingUsage(prompt_tokens=n, total_tokens=n)


def _json(obj: Any) -> Response[Any]:
    return Response(encode(obj), media_type="application/json")


def _as_dtype(v: np.ndarray, embed_dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """`v` rounded to embed_dtype: (the stored values as float32, their storage array). bfloat16
    is float32's upper half, rounded to nearest even (numpy has no bfloat16)."""
    v = np.ascontiguousarray(v, dtype=np.float32)
    if embed_dtype == "float32":
        return v, v
    if embed_dtype == "float16":
        h = v.astype(np.float16)
        return h.astype(np.float32), h
    bits = v.view(np.uint32).astype(np.uint64)
    b16 = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return (b16.astype(np.uint32) << 16).view(np.float32), b16


_BYTE_ORDER: dict[str, Literal["=", "<", ">"]] = {"native": "=", "little": "<", "big": ">"}


def _encoded(v: np.ndarray, req: pp._Encoded) -> Any:
    """float: nested lists of the values rounded to embed_dtype; base64: the flattened values
    stored as embed_dtype with the requested byte order (vLLM's embed_dtype / endianness)."""
    values, stored = _as_dtype(v, req.embed_dtype)
    if req.encoding_format == "float":
        return values.tolist()
    order = _BYTE_ORDER[req.endianness]
    data = stored.astype(stored.dtype.newbyteorder(order), copy=False).tobytes()
    return base64.b64encode(data).decode()


async def create_embedding(
    ctx: Context, request: Request[Any, Any, Any], raw: bytes
) -> Response[Any]:
    req, body, model = _decode(ctx, request, raw, pp.EmbeddingRequest, "/v1/embeddings")
    pooler = _pooler(ctx, "/v1/embeddings")
    task = _task(pooler, "embed", "/v1/embeddings")
    params = _params(req)
    if params.dimensions is not None:
        try:
            pooler.check_dimensions(params.dimensions)
        except ValueError as e:
            raise APIError(str(e), 400, "dimensions", "invalid_value") from e
    inputs = _inputs(ctx, pooler, req, body, params)
    rid = _response_id("embd", request, req)
    vectors = await _run(ctx, task, inputs, params, req.priority, rid)
    data = [pp.EmbeddingData(index=i, embedding=_encoded(v, req)) for i, v in enumerate(vectors)]
    return _json(
        pp.EmbeddingResponse(id=rid, created=now(), model=model, data=data, usage=_usage(inputs))
    )


async def create_pooling(
    ctx: Context, request: Request[Any, Any, Any], raw: bytes
) -> Response[Any]:
    req, body, model = _decode(ctx, request, raw, pp.PoolingRequest, "/pooling")
    pooler = _pooler(ctx, "/pooling")
    task = _task(pooler, req.task or pooler.config.default_task, "/pooling")
    params = _params(req)
    inputs = _inputs(ctx, pooler, req, body, params)
    rid = _response_id("pool", request, req)
    outs = await _run(ctx, task, inputs, params, req.priority, rid)
    data = [pp.PoolingData(index=i, data=_encoded(v, req)) for i, v in enumerate(outs)]
    return _json(
        pp.PoolingResponse(id=rid, created=now(), model=model, data=data, usage=_usage(inputs))
    )


async def create_classify(
    ctx: Context, request: Request[Any, Any, Any], raw: bytes
) -> Response[Any]:
    req, body, model = _decode(ctx, request, raw, pp.ClassificationRequest, "/classify")
    pooler = _pooler(ctx, "/classify")
    task = _task(pooler, "classify", "/classify")
    params = _params(req)
    inputs = _inputs(ctx, pooler, req, body, params)
    rid = _response_id("classify", request, req)
    outs = await _run(ctx, task, inputs, params, req.priority, rid)
    labels = pooler.config.id2label
    data = []
    for i, p in enumerate(outs):
        best = int(np.argmax(p))
        data.append(
            pp.ClassificationData(
                index=i,
                label=labels.get(best, f"LABEL_{best}"),
                probs=p.tolist(),
                num_classes=int(p.shape[-1]),
            )
        )
    return _json(
        pp.ClassificationResponse(
            id=rid, created=now(), model=model, data=data, usage=_usage(inputs)
        )
    )


def _texts(value: Any, name: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        out = []
        for i, v in enumerate(value):
            if isinstance(v, dict) and isinstance(v.get("text"), str):
                out.append(v["text"])
            elif isinstance(v, str):
                out.append(v)
            else:
                raise APIError(
                    f"{name} items must be strings or {{text}} objects", 400, f"{name}[{i}]"
                )
        return out
    raise APIError(f"{name} must be a string or a non-empty list", 400, name, "invalid_type")


async def _scores(
    ctx: Context,
    pooler: Pooler,
    firsts: list[str],
    seconds: list[str],
    req: pp.ScoreRequest | pp.RerankRequest,
    request_id: str,
) -> tuple[list[float], pp.PoolingUsage]:
    """Pair scores (after the 1:N broadcast): cross-encoder probability or embedding cosine."""
    params = _params(req)
    trunc = params.truncate_prompt_tokens
    try:
        if pooler.config.is_cross_encoder:
            inputs = [pooler.tokenize(a, b, trunc) for a, b in zip(firsts, seconds, strict=True)]
            outs = await _run(
                ctx, _task(pooler, "score", "score"), inputs, params, req.priority, request_id
            )
            return [float(o[0]) for o in outs], _usage(inputs)
        texts = list(dict.fromkeys(firsts + seconds))
        inputs = [pooler.tokenize(t, truncate=trunc) for t in texts]
    except ValueError as e:
        raise APIError(str(e), 400, None, "invalid_request") from e
    embeds = await _run(
        ctx, _task(pooler, "embed", "score"), inputs, params, req.priority, request_id
    )
    vecs = dict(zip(texts, embeds, strict=True))
    scores = []
    for a, b in zip(firsts, seconds, strict=True):
        va, vb = vecs[a], vecs[b]
        scores.append(float(va @ vb / max(np.linalg.norm(va) * np.linalg.norm(vb), 1e-12)))
    return scores, _usage(inputs)


async def create_score(ctx: Context, request: Request[Any, Any, Any], raw: bytes) -> Response[Any]:
    req, _, model = _decode(ctx, request, raw, pp.ScoreRequest, "/score")
    pooler = _pooler(ctx, "/score")
    _task(pooler, "score", "/score")
    first_name = "text_1" if req.text_1 is not None else "queries"
    second_name = "text_2" if req.text_2 is not None else "documents"
    firsts = _texts(req.text_1 if req.text_1 is not None else req.queries, first_name)
    seconds = _texts(req.text_2 if req.text_2 is not None else req.documents, second_name)
    if len(firsts) == 1:
        firsts = firsts * len(seconds)
    if len(firsts) != len(seconds):
        raise APIError(
            f"{first_name} and {second_name} must have the same length, or {first_name} a "
            "single item",
            400,
            first_name,
        )
    rid = _response_id("score", request, req)
    scores, usage = await _scores(ctx, pooler, firsts, seconds, req, rid)
    data = [pp.ScoreData(index=i, score=s) for i, s in enumerate(scores)]
    return _json(pp.ScoreResponse(id=rid, created=now(), model=model, data=data, usage=usage))


async def create_rerank(ctx: Context, request: Request[Any, Any, Any], raw: bytes) -> Response[Any]:
    req, _, model = _decode(ctx, request, raw, pp.RerankRequest, "/rerank")
    pooler = _pooler(ctx, "/rerank")
    _task(pooler, "score", "/rerank")
    docs = _texts(req.documents, "documents")
    if req.top_n is not None and req.top_n < 0:
        raise APIError("top_n must be non-negative", 400, "top_n", "invalid_value")
    rid = _response_id("rerank", request, req)
    scores, usage = await _scores(ctx, pooler, [req.query] * len(docs), docs, req, rid)
    order = sorted(range(len(docs)), key=lambda i: -scores[i])
    if req.top_n:
        order = order[: req.top_n]
    results = []
    for i in order:
        item = pp.RerankResult(index=i, relevance_score=scores[i])
        if req.return_documents:
            item.document = pp.RerankDocument(text=docs[i])
        results.append(item)
    return _json(
        pp.RerankResponse(
            id=rid,
            model=model,
            usage=usage,
            results=results,
            meta=pp.RerankMeta(billed_units=pp.RerankBilledUnits()),
        )
    )


# Route -> (request, response) Structs, for /openapi.json.
POOLING_SCHEMAS: dict[str, tuple[type[Any], type[Any]]] = {
    "/v1/embeddings": (pp.EmbeddingRequest, pp.EmbeddingResponse),
    "/pooling": (pp.PoolingRequest, pp.PoolingResponse),
    "/classify": (pp.ClassificationRequest, pp.ClassificationResponse),
    **{path: (pp.ScoreRequest, pp.ScoreResponse) for path in ("/score", "/v1/score")},
    **{
        path: (pp.RerankRequest, pp.RerankResponse)
        for path in ("/rerank", "/v1/rerank", "/v2/rerank")
    },
}


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
