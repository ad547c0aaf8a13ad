"""POST /v1/chat/completions (OpenAI's chat completions, with vLLM's chat extras)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from litestar import Request, Response
from litestar.response import Stream

from fastlm.chat_template import effective_add_generation_prompt
from fastlm.output_processor import DeltaAccumulator
from fastlm.outputs import Logprob, RequestOutput
from fastlm.server.chat_tools import ChoiceOutput, assemble, history_for_template, tool_plan
from fastlm.server.errors import APIError, NotSupportedError, error_body
from fastlm.server.protocol import (
    ChatCompletionChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamResponse,
    ChatLogprobContent,
    ChatLogprobs,
    ChatResponseMessage,
    ChatStreamChoice,
    DeltaMessage,
    TopLogprob,
    UsageInfo,
    encode,
)
from fastlm.server.serving import (
    ENGINE_ERRORS,
    MIN_LOGPROB,
    SSE_DONE,
    Context,
    base_request_id,
    decode_request_raw,
    engine_error,
    engine_request_id,
    merge_streams,
    now,
    sse,
    top_entries,
    until_disconnect,
)
from fastlm.server.serving_audio import refuse_speech_model
from fastlm.server.structured import compile_grammar, request_structured_outputs
from fastlm.structured_outputs import with_config_defaults


def _utf8(text: str) -> list[int]:
    return list(text.encode("utf-8", errors="replace"))


def chat_logprobs(
    ctx: Context,
    token_ids: list[int],
    steps: list[dict[int, Logprob]],
    num: int,
    as_ids: bool,
) -> ChatLogprobs:
    content: list[ChatLogprobContent] = []
    for i, tok in enumerate(token_ids):
        step = steps[i] if i < len(steps) else None
        if step is None or tok not in step:
            token = ctx.token_text(tok, None, as_ids)
            content.append(ChatLogprobContent(token=token, bytes=_utf8(token)))
            continue
        lp = step[tok]
        token = ctx.token_text(tok, lp, as_ids)
        top = []
        for t, tlp in top_entries(step, num):
            text = ctx.token_text(t, tlp, as_ids)
            top.append(
                TopLogprob(token=text, logprob=max(tlp.logprob, MIN_LOGPROB), bytes=_utf8(text))
            )
        content.append(
            ChatLogprobContent(
                token=token,
                logprob=max(lp.logprob, MIN_LOGPROB),
                bytes=_utf8(token),
                top_logprobs=top,
            )
        )
    return ChatLogprobs(content=content)


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            p if isinstance(p, str) else str(p.get("text", ""))
            for p in content
            if isinstance(p, str) or p.get("type") == "text"
        )
    return ""


class _Prepared:
    def __init__(self, ctx: Context, request: Request[Any, Any, Any], body: bytes) -> None:
        req, raw = decode_request_raw(
            body,
            request.headers.get("content-type"),
            ChatCompletionRequest,
            "/v1/chat/completions",
        )
        self.req = req
        self.model = ctx.check_model(req.model)
        self.tool_plan = tool_plan(req, ctx.tool_config)
        if req.functions or req.function_call is not None:
            raise NotSupportedError("Function calling (functions)", "functions")
        if not req.messages:
            raise APIError("messages must hold at least one message", 400, "messages")
        self.n = ctx.check_n(req.n)
        if req.top_logprobs and not req.logprobs:
            raise APIError(
                "when using `top_logprobs`, `logprobs` must be set to true.",
                400,
                "top_logprobs",
            )
        ctx.check_logprobs(req.top_logprobs, "top_logprobs")
        self.num_top = req.top_logprobs or 0
        messages: list[dict[str, Any]] = history_for_template(list(raw["messages"]))
        template_kwargs = dict(req.chat_template_kwargs or {})
        if req.reasoning_effort is not None:
            template_kwargs.setdefault("reasoning_effort", req.reasoning_effort)
        self.prompt_text = ctx.render_chat(
            messages,
            chat_template=req.chat_template,
            add_generation_prompt=req.add_generation_prompt,
            continue_final_message=req.continue_final_message,
            documents=req.documents,
            tools=list(raw["tools"]) if req.tools else None,
            chat_template_kwargs=template_kwargs or None,
        )
        ids = ctx.tokenizer.encode(self.prompt_text, add_special_tokens=req.add_special_tokens)
        self.prompt_ids = ctx.truncate(ids, req.truncate_prompt_tokens)
        requested = req.max_completion_tokens
        max_param = "max_completion_tokens"
        if requested is None:
            requested, max_param = req.max_tokens, "max_tokens"
        max_tokens = ctx.max_tokens(requested, len(self.prompt_ids), "messages", max_param)
        structured, self.structured_param = request_structured_outputs(
            req, ctx.config.structured_outputs_config
        )
        tool_grammar = with_config_defaults(
            self.tool_plan.structured_outputs(), ctx.config.structured_outputs_config
        )
        if tool_grammar is not None:
            if structured is not None:
                raise APIError(
                    f"tool_choice {self.tool_plan.mode} is enforced with a grammar and cannot be "
                    f"combined with {self.structured_param}",
                    400,
                    "tool_choice",
                )
            structured, self.structured_param = tool_grammar, "tools"
        # With --reasoning-parser a constrained output reasons freely and follows its grammar
        # after the think block; with enable_in_reasoning the grammar applies from the first
        # token, and there is no reasoning split.
        self.tool_config = ctx.tool_config
        reasoning_tags = None
        if structured is not None and ctx.tool_config.reasoning_parser is not None:
            if ctx.config.structured_outputs_config.get("enable_in_reasoning"):
                self.tool_config = dataclasses.replace(ctx.tool_config, reasoning_parser=None)
            else:
                reasoning_tags = ctx.think_tokens
        self.params = ctx.sampling_params(
            req,
            n=self.n,
            max_tokens=max_tokens,
            logprobs=self.num_top if req.logprobs else None,
            prompt_logprobs=req.prompt_logprobs,
            structured_outputs=structured,
        )
        self.params.reasoning_tags = reasoning_tags
        self.prompt_block = (
            ctx.think_tokens.prompt_block(self.prompt_ids)
            if ctx.think_tokens is not None and self.tool_config.reasoning_parser is not None
            else None
        )
        generation_prompt = effective_add_generation_prompt(
            req.add_generation_prompt, req.chat_template_kwargs
        )
        self.role = "assistant" if generation_prompt else str(messages[-1].get("role"))
        self.echo_text = ""
        if req.echo and messages[-1].get("role") == self.role:
            self.echo_text = _message_text(messages[-1])
        self.response_id = f"chatcmpl-{base_request_id(request, req.request_id)}"
        self.created = now()
        self.as_ids = bool(req.return_tokens_as_token_ids)

    def stream(self, ctx: Context) -> AsyncIterator[RequestOutput]:
        text = self.prompt_text if self.req.truncate_prompt_tokens is None else None
        request_id = engine_request_id(self.response_id)
        ctx.log_request(request_id, text, self.prompt_ids, self.params)
        return ctx.metrics.track(
            ctx.engine.generate(
                request_id,
                text,
                self.prompt_ids,
                self.params,
                self.req.priority,
                self.req.cache_salt,
            ),
            time.monotonic(),
            delta=True,
        )

    def choice_output(self) -> ChoiceOutput:
        return ChoiceOutput(
            self.tool_plan, self.tool_config, self.req.include_reasoning, self.prompt_block
        )

    def logprobs(
        self, ctx: Context, token_ids: list[int], steps: list[dict[int, Logprob]]
    ) -> ChatLogprobs | None:
        if not self.req.logprobs:
            return None
        return chat_logprobs(ctx, token_ids, steps, self.num_top, self.as_ids)


async def create_chat_completion(
    ctx: Context, request: Request[Any, Any, Any], body: bytes
) -> Response[Any] | Stream:
    refuse_speech_model(ctx, "/v1/chat/completions")
    prep = _Prepared(ctx, request, body)
    if prep.params.structured_outputs is not None and prep.structured_param is not None:
        await compile_grammar(ctx.runtime, [prep.params], prep.structured_param)
    merged = merge_streams([prep.stream(ctx)])
    if prep.req.stream:
        try:
            first = await until_disconnect(request, merged.__anext__())
        except ENGINE_ERRORS as e:
            await merged.aclose()
            raise engine_error(e) from e
        return Stream(
            _stream(ctx, prep, first[1], merged),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )

    async def collect() -> RequestOutput | None:
        acc = DeltaAccumulator()
        async for _, out in merged:
            acc.add(out)
        return acc.result()

    try:
        final = await until_disconnect(request, collect())
    except ENGINE_ERRORS as e:
        raise engine_error(e) from e
    finally:
        await merged.aclose()
    assert final is not None
    return Response(encode(_response(ctx, prep, final)), media_type="application/json")


def _response(ctx: Context, prep: _Prepared, out: RequestOutput) -> ChatCompletionResponse:
    choices = []
    num_generated = 0
    for o in out.outputs:
        num_generated += len(o.token_ids)
        shaper = prep.choice_output()
        parts = shaper.feed(o.text)
        rest, finish_reason = shaper.finish(o.finish_reason)
        content, reasoning, tool_calls = assemble(parts + rest)
        if content is None and not tool_calls:
            content = ""
        if prep.echo_text:
            content = prep.echo_text + (content or "")
        choice = ChatCompletionChoice(
            index=o.index,
            message=ChatResponseMessage(
                role=prep.role, content=content, reasoning_content=reasoning, tool_calls=tool_calls
            ),
            logprobs=prep.logprobs(ctx, list(o.token_ids), list(o.logprobs or [])),
            finish_reason=finish_reason,
            stop_reason=o.stop_reason,
        )
        if prep.req.return_token_ids:
            choice.token_ids = list(o.token_ids)
        choices.append(choice)
    num_prompt = len(out.prompt_token_ids)
    resp = ChatCompletionResponse(
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
    if prep.req.prompt_logprobs is not None:
        resp.prompt_logprobs = ctx.prompt_logprobs_json(
            out.prompt_token_ids, out.prompt_logprobs, prep.as_ids
        )
    if prep.req.return_token_ids:
        resp.prompt_token_ids = list(out.prompt_token_ids)
    return resp


async def _stream(
    ctx: Context,
    prep: _Prepared,
    first: RequestOutput,
    rest: AsyncGenerator[tuple[int, RequestOutput], None],
) -> AsyncIterator[bytes]:
    req = prep.req
    opts = req.stream_options
    include_usage = bool(opts and opts.include_usage)
    continuous = include_usage and bool(opts and opts.continuous_usage_stats)
    num_prompt = len(first.prompt_token_ids)
    generated = [0] * prep.n
    done = [False] * prep.n
    # Tokens whose text is held back (a partial character or a possible stop string) wait here
    # with their logprobs until their text goes out. Outputs are deltas: O(new tokens) a chunk.
    pending_ids: list[list[int]] = [[] for _ in range(prep.n)]
    pending_steps: list[list[dict[int, Logprob]]] = [[] for _ in range(prep.n)]

    def chunk(choice: ChatStreamChoice) -> bytes:
        c = ChatCompletionStreamResponse(
            id=prep.response_id, created=prep.created, model=prep.model, choices=[choice]
        )
        if continuous:
            g = sum(generated)
            c.usage = UsageInfo(
                prompt_tokens=num_prompt, completion_tokens=g, total_tokens=num_prompt + g
            )
        return sse(encode(c))

    shapers = [prep.choice_output() for _ in range(prep.n)]

    def deltas(out: RequestOutput) -> list[bytes]:
        result = []
        for o in out.outputs:
            i = o.index
            if done[i]:
                continue
            generated[i] += len(o.token_ids)
            pending_ids[i].extend(o.token_ids)
            pending_steps[i].extend(o.logprobs or [])
            # Held back: a partial character, a possible stop string, a possible tool call or
            # think tag.
            messages = shapers[i].feed(o.text) if o.text else []
            finish_reason = o.finish_reason
            if finish_reason is not None:
                rest, finish_reason = shapers[i].finish(finish_reason)
                messages += rest
            if not messages and finish_reason is None:
                continue
            ids, steps = pending_ids[i], pending_steps[i]
            pending_ids[i], pending_steps[i] = [], []
            for k, message in enumerate(messages or [DeltaMessage()]):
                last = k == max(len(messages), 1) - 1
                choice = ChatStreamChoice(
                    index=i,
                    delta=message,
                    logprobs=prep.logprobs(ctx, ids, steps) if k == 0 else None,
                    finish_reason=finish_reason if last else None,
                )
                if last and finish_reason is not None:
                    done[i] = True
                    choice.stop_reason = o.stop_reason
                if req.return_token_ids:
                    choice.token_ids = ids if k == 0 else []
                result.append(chunk(choice))
        return result

    try:
        for i in range(prep.n):
            first_choice = ChatStreamChoice(index=i, delta=DeltaMessage(role=prep.role, content=""))
            if req.return_token_ids:
                first_choice.token_ids = []
            yield chunk(first_choice)
            if prep.echo_text:
                yield chunk(ChatStreamChoice(index=i, delta=DeltaMessage(content=prep.echo_text)))
        for b in deltas(first):
            yield b
        async for _, out in rest:
            for b in deltas(out):
                yield b
        if include_usage:
            g = sum(generated)
            yield sse(
                encode(
                    ChatCompletionStreamResponse(
                        id=prep.response_id,
                        created=prep.created,
                        model=prep.model,
                        choices=[],
                        usage=UsageInfo(
                            prompt_tokens=num_prompt,
                            completion_tokens=g,
                            total_tokens=num_prompt + g,
                        ),
                    )
                )
            )
    except ENGINE_ERRORS as e:
        err = engine_error(e)
        yield sse(encode(error_body(err.message, err.status, err.param, err.code)))
    finally:
        await rest.aclose()
    yield SSE_DONE
