"""POST /v1/completions (OpenAI's legacy completions, with vLLM's extras)."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from litestar import Request, Response
from litestar.response import Stream

from fastlm.output_processor import DeltaAccumulator
from fastlm.outputs import Logprob, RequestOutput
from fastlm.server.errors import APIError, NotSupportedError, error_body
from fastlm.server.protocol import (
    CompletionLogProbs,
    CompletionRequest,
    CompletionResponse,
    CompletionResponseChoice,
    UsageInfo,
    encode,
)
from fastlm.server.serving import (
    ENGINE_ERRORS,
    MIN_LOGPROB,
    SSE_DONE,
    Context,
    base_request_id,
    decode_request,
    engine_error,
    engine_request_id,
    merge_streams,
    now,
    sse,
    until_disconnect,
)
from fastlm.server.serving_audio import refuse_speech_model
from fastlm.server.structured import compile_grammar, request_structured_outputs


def _parse_prompts(ctx: Context, req: CompletionRequest) -> list[tuple[str | None, list[int]]]:
    p = req.prompt
    if p is None:
        raise APIError("prompt is required", 400, "prompt", "missing_required_parameter")

    def enc(text: str) -> list[int]:
        return ctx.tokenizer.encode(text, add_special_tokens=req.add_special_tokens)

    if isinstance(p, str):
        return [(p, enc(p))]
    if not p:
        raise APIError("prompt must not be an empty list", 400, "prompt")
    if all(isinstance(x, str) for x in p):
        return [(x, enc(x)) for x in p]
    if all(isinstance(x, int) and not isinstance(x, bool) for x in p):
        return [(None, ctx.check_token_ids(p, "prompt"))]
    if all(isinstance(x, list) for x in p):
        return [(None, ctx.check_token_ids(x, "prompt")) for x in p]
    raise APIError(
        "prompt must be a string, a list of strings, a list of token ids or a list of lists "
        "of token ids",
        400,
        "prompt",
        "invalid_type",
    )


class _Logprobs:
    """Builds OpenAI's completion logprobs (tokens, token_logprobs, top_logprobs, text_offset)
    as vLLM does: top_logprobs holds the chosen token and the `num` most likely ones."""

    def __init__(self, ctx: Context, num: int, as_ids: bool) -> None:
        self.ctx = ctx
        self.num = num
        self.as_ids = as_ids

    def build(
        self,
        token_ids: list[int],
        steps: list[dict[int, Logprob] | None],
        initial_offset: int,
    ) -> CompletionLogProbs:
        out = CompletionLogProbs()
        offset = initial_offset
        last_len = 0
        for i, tok in enumerate(token_ids):
            step = steps[i] if i < len(steps) else None
            if step is None or tok not in step:
                token = self.ctx.token_text(tok, None, self.as_ids)
                out.tokens.append(token)
                out.token_logprobs.append(None)
                out.top_logprobs.append(None)
            else:
                token = self.ctx.token_text(tok, step[tok], self.as_ids)
                out.tokens.append(token)
                out.token_logprobs.append(max(step[tok].logprob, MIN_LOGPROB))
                top: dict[str, float] = {}
                for j, (t, lp) in enumerate(step.items()):
                    if j > self.num:
                        break
                    top[self.ctx.token_text(t, lp, self.as_ids)] = max(lp.logprob, MIN_LOGPROB)
                out.top_logprobs.append(top)
            offset = offset + last_len if out.text_offset else initial_offset
            out.text_offset.append(offset)
            last_len = len(token)
        return out


class _Prepared:
    def __init__(self, ctx: Context, request: Request[Any, Any, Any], body: bytes) -> None:
        req = decode_request(
            body, request.headers.get("content-type"), CompletionRequest, "/v1/completions"
        )
        self.req = req
        self.model = ctx.check_model(req.model)
        if req.suffix is not None:
            raise NotSupportedError("suffix", "suffix")
        self.n = ctx.check_n(req.n)
        if req.best_of is not None and req.best_of != self.n:
            raise NotSupportedError("best_of other than n", "best_of")
        ctx.check_logprobs(req.logprobs, "logprobs")
        self.echo = bool(req.echo)
        self.echo_only = self.echo and req.max_tokens == 0
        prompt_logprobs = req.prompt_logprobs
        if prompt_logprobs is None and self.echo and req.logprobs is not None:
            prompt_logprobs = req.logprobs
        self.prompts = []
        self.params = []
        self.structured, self.structured_param = request_structured_outputs(
            req, ctx.config.structured_outputs_config
        )
        for text, ids in _parse_prompts(ctx, req):
            ids = ctx.truncate(ids, req.truncate_prompt_tokens)
            if req.truncate_prompt_tokens is not None:
                text = None  # the text no longer matches the tokens
            max_tokens = ctx.max_tokens(
                1 if self.echo_only else req.max_tokens, len(ids), "prompt", "max_tokens"
            )
            self.prompts.append((text, ids))
            self.params.append(
                ctx.sampling_params(
                    req,
                    n=self.n,
                    max_tokens=max_tokens,
                    logprobs=req.logprobs,
                    prompt_logprobs=prompt_logprobs,
                    structured_outputs=self.structured,
                )
            )
        self.response_id = f"cmpl-{base_request_id(request, req.request_id)}"
        self.created = now()
        self.as_ids = bool(req.return_tokens_as_token_ids)
        self.logprobs = (
            _Logprobs(ctx, req.logprobs, self.as_ids) if req.logprobs is not None else None
        )

    def streams(self, ctx: Context) -> list[AsyncIterator[RequestOutput]]:
        arrival = time.monotonic()
        base = engine_request_id(self.response_id)
        for i, ((text, ids), params) in enumerate(zip(self.prompts, self.params, strict=True)):
            ctx.log_request(f"{base}-{i}", text, ids, params)
        return [
            ctx.metrics.track(
                ctx.engine.generate(
                    f"{base}-{i}", text, ids, params, self.req.priority, self.req.cache_salt
                ),
                arrival,
                delta=True,
            )
            for i, ((text, ids), params) in enumerate(zip(self.prompts, self.params, strict=True))
        ]

    def prompt_text(self, ctx: Context, out: RequestOutput) -> str:
        if out.prompt is not None:
            return out.prompt
        return ctx.tokenizer.decode(out.prompt_token_ids, skip_special_tokens=False)


async def create_completion(
    ctx: Context, request: Request[Any, Any, Any], body: bytes
) -> Response[Any] | Stream:
    refuse_speech_model(ctx, "/v1/completions")
    prep = _Prepared(ctx, request, body)
    if prep.structured is not None and prep.structured_param is not None:
        await compile_grammar(ctx.runtime, prep.params, prep.structured_param)
    streams = prep.streams(ctx)
    merged = merge_streams(streams)
    if prep.req.stream:
        try:
            first = await until_disconnect(request, merged.__anext__())
        except ENGINE_ERRORS as e:
            await merged.aclose()
            raise engine_error(e) from e
        return Stream(
            _stream(ctx, prep, first, merged),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )

    async def collect() -> list[RequestOutput]:
        accs = [DeltaAccumulator() for _ in streams]
        async for i, out in merged:
            accs[i].add(out)
        return [f for f in (a.result() for a in accs) if f is not None]

    try:
        finals = await until_disconnect(request, collect())
    except ENGINE_ERRORS as e:
        raise engine_error(e) from e
    finally:
        await merged.aclose()
    return Response(encode(_response(ctx, prep, finals)), media_type="application/json")


def _response(ctx: Context, prep: _Prepared, finals: list[RequestOutput]) -> CompletionResponse:
    req = prep.req
    choices: list[CompletionResponseChoice] = []
    num_prompt = num_generated = 0
    for i, out in enumerate(finals):
        num_prompt += len(out.prompt_token_ids)
        plp = out.prompt_logprobs or []
        for o in out.outputs:
            if prep.echo_only:
                text = prep.prompt_text(ctx, out)
                token_ids, steps = list(out.prompt_token_ids), list(plp)
            else:
                num_generated += len(o.token_ids)
                text, token_ids, steps = o.text, list(o.token_ids), list(o.logprobs or [])
                if prep.echo:
                    text = prep.prompt_text(ctx, out) + text
                    prompt_steps = list(plp) + [None] * (len(out.prompt_token_ids) - len(plp))
                    steps = prompt_steps + steps
                    token_ids = list(out.prompt_token_ids) + token_ids
            choice = CompletionResponseChoice(
                index=i * prep.n + o.index,
                text=text,
                logprobs=prep.logprobs.build(token_ids, steps, 0) if prep.logprobs else None,
                finish_reason=o.finish_reason,
                stop_reason=o.stop_reason,
            )
            if req.prompt_logprobs is not None:
                choice.prompt_logprobs = ctx.prompt_logprobs_json(
                    out.prompt_token_ids, out.prompt_logprobs, prep.as_ids
                )
            if req.return_token_ids:
                choice.token_ids = list(o.token_ids)
                choice.prompt_token_ids = list(out.prompt_token_ids)
            choices.append(choice)
    choices.sort(key=lambda c: c.index)
    return CompletionResponse(
        id=prep.response_id,
        created=prep.created,
        model=prep.model,
        choices=choices,
        usage=UsageInfo(
            prompt_tokens=num_prompt,
            completion_tokens=num_generated,
            total_tokens=num_prompt + num_generated,
        ),
    )


async def _stream(
    ctx: Context,
    prep: _Prepared,
    first: tuple[int, RequestOutput],
    rest: AsyncGenerator[tuple[int, RequestOutput], None],
) -> AsyncIterator[bytes]:
    req = prep.req
    opts = req.stream_options
    include_usage = bool(opts and opts.include_usage)
    continuous = include_usage and bool(opts and opts.continuous_usage_stats)
    started: set[int] = set()
    text_len: dict[int, int] = {}  # characters streamed so far (echo included): text_offset base
    done: set[int] = set()
    prompt_lens: dict[int, int] = {}
    gen_tokens: dict[int, int] = {}

    def chunks(i: int, out: RequestOutput) -> list[bytes]:
        result = []
        prompt_lens[i] = len(out.prompt_token_ids)
        for o in out.outputs:
            idx = i * prep.n + o.index
            if idx in done:
                continue
            is_first = idx not in started
            prefix, prefix_ids = "", []
            prefix_steps: list[dict[int, Logprob] | None] = []
            if prep.echo and is_first:
                prefix = prep.prompt_text(ctx, out)
                prefix_ids = list(out.prompt_token_ids)
                plp = list(out.prompt_logprobs or [])
                prefix_steps = plp + [None] * (len(prefix_ids) - len(plp))
            # The engine hands out deltas (RequestOutputKind.DELTA): O(new tokens) per chunk.
            if prep.echo_only:
                delta_text, delta_ids = "", []
                delta_steps: list[dict[int, Logprob] | None] = []
            else:
                delta_text = o.text
                delta_ids = list(o.token_ids)
                delta_steps = list(o.logprobs or [])
            gen_tokens[idx] = gen_tokens.get(idx, 0) + len(delta_ids)
            finish = o.finish_reason
            if not (prefix or delta_text or delta_ids or finish):
                continue  # nothing sent yet: the next chunk is still the first
            started.add(idx)
            if finish is not None:
                done.add(idx)
            logprobs = None
            if prep.logprobs is not None:
                logprobs = prep.logprobs.build(
                    prefix_ids + delta_ids, prefix_steps + delta_steps, text_len.get(idx, 0)
                )
            text = prefix + delta_text
            text_len[idx] = text_len.get(idx, 0) + len(text)
            choice = CompletionResponseChoice(
                index=idx,
                text=text,
                logprobs=logprobs,
                finish_reason=finish,
                stop_reason=o.stop_reason if finish is not None else None,
            )
            if req.return_token_ids:
                choice.token_ids = delta_ids
                if is_first:
                    choice.prompt_token_ids = list(out.prompt_token_ids)
            chunk = CompletionResponse(
                id=prep.response_id, created=prep.created, model=prep.model, choices=[choice]
            )
            if continuous:
                p, c = len(out.prompt_token_ids), gen_tokens[idx]
                chunk.usage = UsageInfo(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)
            result.append(sse(encode(chunk)))
        return result

    try:
        for b in chunks(*first):
            yield b
        async for i, out in rest:
            for b in chunks(i, out):
                yield b
        if include_usage:
            p = sum(prompt_lens.values())
            c = sum(gen_tokens.values())
            usage = CompletionResponse(
                id=prep.response_id,
                created=prep.created,
                model=prep.model,
                choices=[],
                usage=UsageInfo(prompt_tokens=p, completion_tokens=c, total_tokens=p + c),
            )
            yield sse(encode(usage))
    except ENGINE_ERRORS as e:
        err = engine_error(e)
        yield sse(encode(error_body(err.message, err.status, err.param, err.code)))
    finally:
        await rest.aclose()
    yield SSE_DONE
