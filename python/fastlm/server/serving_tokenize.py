"""POST /tokenize (completion and chat forms) and POST /detokenize, as vLLM serves them."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response

from fastlm.server.chat_tools import history_for_template
from fastlm.server.errors import APIError
from fastlm.server.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
    TokenizeResponse,
    encode,
)
from fastlm.server.serving import Context, decode_request, decode_request_raw


def _is_chat(body: bytes) -> bool:
    import msgspec

    try:
        raw = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return False  # decode_request reports it
    return isinstance(raw, dict) and "messages" in raw


async def tokenize(ctx: Context, request: Request[Any, Any, Any], body: bytes) -> Response[Any]:
    content_type = request.headers.get("content-type")
    if _is_chat(body):
        chat, raw = decode_request_raw(body, content_type, TokenizeChatRequest, "/tokenize")
        ctx.check_model(chat.model)
        for i, tool in enumerate(chat.tools or []):
            if not isinstance(tool, dict) or not isinstance(tool.get("function"), dict):
                raise APIError(f"tools[{i}] must be a function tool", 400, "tools")
        text = ctx.render_chat(
            history_for_template(list(raw["messages"])),
            chat_template=chat.chat_template,
            add_generation_prompt=chat.add_generation_prompt,
            continue_final_message=chat.continue_final_message,
            documents=chat.documents,
            tools=list(raw["tools"]) if chat.tools else None,
            chat_template_kwargs=chat.chat_template_kwargs,
        )
        ids = ctx.tokenizer.encode(text, add_special_tokens=chat.add_special_tokens)
        want_strs = bool(chat.return_token_strs)
    else:
        req = decode_request(body, content_type, TokenizeCompletionRequest, "/tokenize")
        ctx.check_model(req.model)
        ids = ctx.tokenizer.encode(req.prompt, add_special_tokens=req.add_special_tokens)
        want_strs = bool(req.return_token_strs)
    strs = None
    if want_strs:
        strs = [s if s is not None else "" for s in ctx.tokenizer.convert_ids_to_tokens(ids)]
    resp = TokenizeResponse(
        count=len(ids), max_model_len=ctx.max_model_len, tokens=ids, token_strs=strs
    )
    return Response(encode(resp), media_type="application/json")


async def detokenize(ctx: Context, request: Request[Any, Any, Any], body: bytes) -> Response[Any]:
    req = decode_request(
        body, request.headers.get("content-type"), DetokenizeRequest, "/detokenize"
    )
    ctx.check_model(req.model)
    ids = ctx.check_token_ids(req.tokens, "tokens")
    text = ctx.tokenizer.decode(ids, skip_special_tokens=False)
    return Response(encode(DetokenizeResponse(prompt=text)), media_type="application/json")
