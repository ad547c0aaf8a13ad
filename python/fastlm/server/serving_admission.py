"""The server's configuration and Context: what the endpoints check before a request is queued
(overload, model, token ids, truncation, max_tokens, logprobs, n, sampling parameters) and chat
rendering."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fastlm.async_engine import AsyncEngine
from fastlm.sampling_params import RequestOutputKind, SamplingParams
from fastlm.server.chat_tools import ToolConfig
from fastlm.server.errors import APIError, NotSupportedError
from fastlm.server.metrics import ServerMetrics
from fastlm.server.serving_decode import sampling_error
from fastlm.server.serving_logprobs import LogprobFormatting
from fastlm.structured_outputs import StructuredOutputsParams

logger = logging.getLogger("fastlm.server")


@dataclass
class ServerConfig:
    served_model_names: list[str]
    model_path: str
    max_logprobs: int = 20
    # Per-request bounds (fastlm's own flags): a request above one is a 400 naming the field.
    max_n: int = 128
    max_tokens_limit: int | None = None  # None: only max_model_len bounds max_tokens
    max_stop_strings: int = 64
    max_logit_bias: int = 1024
    # Waiting-queue limit: beyond it new generation / pooling requests get a 503 with
    # Retry-After instead of queueing (None: unbounded).
    max_waiting_requests: int | None = None
    # Largest audio upload of /v1/audio/* in bytes (a 413 above it).
    max_audio_file_size: int = 25 * 2**20
    chat_template: str | None = None
    chat_template_content_format: str = "auto"
    enable_request_id_headers: bool = False
    disable_log_requests: bool = True
    max_log_len: int | None = None
    api_keys: list[str] = field(default_factory=list)
    # Tools and reasoning (vLLM's flags): --enable-auto-tool-choice, --tool-call-parser,
    # --tool-parser-plugin (a file run at start-up that may register parsers),
    # --reasoning-parser.
    enable_auto_tool_choice: bool = False
    # --structured-outputs-config: backend and request defaults (disable_any_whitespace, ...).
    structured_outputs_config: dict[str, Any] = field(default_factory=dict)
    tool_call_parser: str | None = None
    tool_parser_plugin: str | None = None
    reasoning_parser: str | None = None


def tool_config(config: ServerConfig) -> ToolConfig:
    """The server's tool and reasoning parsers; ValueError for an unknown name."""
    from fastlm.reasoning import get_reasoning_parser
    from fastlm.tool_parsers import get_tool_parser, load_tool_parser_plugin

    if config.tool_parser_plugin:
        load_tool_parser_plugin(config.tool_parser_plugin)
    if config.enable_auto_tool_choice and not config.tool_call_parser:
        raise ValueError("--enable-auto-tool-choice needs --tool-call-parser")
    return ToolConfig(
        enable_auto_tool_choice=config.enable_auto_tool_choice,
        tool_parser=get_tool_parser(config.tool_call_parser) if config.tool_call_parser else None,
        reasoning_parser=(
            get_reasoning_parser(config.reasoning_parser) if config.reasoning_parser else None
        ),
    )


class Context(LogprobFormatting):
    """The engine plus everything the endpoints need from the server's configuration."""

    def __init__(self, engine: AsyncEngine, config: ServerConfig, metrics: ServerMetrics):
        self.engine = engine
        self.runtime = engine.runtime
        self.tokenizer = engine.tokenizer
        self.config = config
        self.metrics = metrics
        self.max_model_len = engine.max_model_len
        self.vocab_size = int(engine.engine.vocab_size)
        self._content_formats: dict[str, str] = {}
        self.tool_config = tool_config(config)
        reasoning = self.tool_config.reasoning_parser
        self.think_tokens = reasoning.think_tokens(self.tokenizer) if reasoning else None

    def log_request(
        self, request_id: str, prompt: str | None, ids: list[int], params: SamplingParams
    ) -> None:
        if self.config.disable_log_requests:
            return
        limit = self.config.max_log_len
        shown_prompt = prompt if prompt is None or limit is None else prompt[:limit]
        shown_ids = ids if limit is None else ids[:limit]
        logger.info(
            "Received request %s: prompt: %r, params: %s, prompt_token_ids: %s",
            request_id,
            shown_prompt,
            params,
            shown_ids,
        )

    # -- admission -------------------------------------------------------------------------
    def check_overload(self) -> None:
        limit = self.config.max_waiting_requests
        if limit is None:
            return
        waiting = int(self.engine.stats().num_waiting)
        if waiting >= limit:
            raise APIError(
                f"The server is overloaded: {waiting} requests are waiting (limit {limit}, "
                "--max-waiting-requests); retry later",
                503,
                None,
                "overloaded",
                headers={"Retry-After": "1"},
            )

    # -- validation ------------------------------------------------------------------------
    def check_model(self, model: str | None) -> str:
        names = self.config.served_model_names
        if model is None or model in names:
            return names[0]
        raise APIError(f"The model `{model}` does not exist.", 404, "model", "model_not_found")

    def check_token_ids(self, ids: Sequence[Any], param: str) -> list[int]:
        for t in ids:
            if not isinstance(t, int) or isinstance(t, bool):
                raise APIError(f"{param} must hold integer token ids", 400, param, "invalid_type")
            if not 0 <= t < self.vocab_size:
                raise APIError(
                    f"Token id {t} in {param} is out of vocabulary (vocabulary size "
                    f"{self.vocab_size})",
                    400,
                    param,
                    "invalid_value",
                )
        return list(ids)

    def truncate(self, ids: list[int], truncate_prompt_tokens: int | None) -> list[int]:
        n = self.truncation_limit(truncate_prompt_tokens)
        return ids if n is None else ids[-n:]

    def truncation_limit(self, truncate_prompt_tokens: int | None) -> int | None:
        """vLLM's truncate_prompt_tokens: None (off), -1 (max_model_len) or 1..max_model_len;
        anything else is a 400."""
        if truncate_prompt_tokens is None:
            return None
        n = truncate_prompt_tokens
        if n == -1:
            n = self.max_model_len
        if n < 1:
            raise APIError(
                f"truncate_prompt_tokens must be -1 or at least 1, got {n}",
                400,
                "truncate_prompt_tokens",
            )
        if n > self.max_model_len:
            raise APIError(
                f"truncate_prompt_tokens value ({n}) is greater than max_model_len "
                f"({self.max_model_len}). Please select a smaller truncation size.",
                400,
                "truncate_prompt_tokens",
            )
        return n

    def check_priority(self, priority: int) -> int:
        """A non-default priority needs `--scheduling-policy priority` (vLLM: a 400)."""
        if priority != 0 and self.runtime.args.scheduling_policy != "priority":
            raise APIError(
                "Priority scheduling is not enabled: start the server with "
                "--scheduling-policy priority to use `priority`",
                400,
                "priority",
            )
        return priority

    def max_tokens(
        self, requested: int | None, num_prompt: int, prompt_param: str, max_param: str
    ) -> int:
        """vLLM's rule: the request's value, capped by the generation config's; the rest of the
        context when unset. Never silent truncation: a prompt that does not fit is a 400."""
        room = self.max_model_len - num_prompt
        if num_prompt == 0:
            raise APIError(
                "The prompt is empty: it must hold at least one token", 400, prompt_param
            )
        if room <= 0:
            raise APIError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"your request has {num_prompt} input tokens. Please reduce the length of the "
                "input.",
                400,
                prompt_param,
                "context_length_exceeded",
            )
        if requested is not None and requested > room:
            raise APIError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"you requested {num_prompt + requested} tokens ({num_prompt} in the input, "
                f"{requested} for the completion). Please reduce the length of the input or "
                "of the completion.",
                400,
                max_param,
                "context_length_exceeded",
            )
        limit = self.config.max_tokens_limit
        if requested is not None and limit is not None and requested > limit:
            raise APIError(
                f"{max_param} ({requested}) is greater than the server's limit of {limit} "
                "(--max-tokens-limit)",
                400,
                max_param,
            )
        candidates = [room]
        if limit is not None:
            candidates.append(limit)
        if requested is not None:
            candidates.append(requested)
        default = self.runtime.default_sampling.get("max_tokens")
        if default is not None:
            candidates.append(int(default))
        return min(candidates)

    def check_logprobs(self, value: int | None, param: str) -> None:
        if value is None:
            return
        if value < 0:
            raise APIError(f"{param} must be non-negative, got {value}", 400, param)
        if value > self.config.max_logprobs:
            raise APIError(
                f"{param} ({value}) is greater than the server's max_logprobs "
                f"({self.config.max_logprobs})",
                400,
                param,
            )

    def check_n(self, n: int | None) -> int:
        n = 1 if n is None else n
        limit = self.config.max_n
        if n < 1 or n > limit:
            raise APIError(
                f"n must be between 1 and {limit} (the server's --max-n), got {n}", 400, "n"
            )
        return n

    def check_stream_fields(self, req: Any) -> None:
        """vLLM's rules for fields that only make sense with (or without) streaming."""
        if req.stream_options is not None and not req.stream:
            raise APIError(
                "Stream options can only be defined when `stream=True`.", 400, "stream_options"
            )
        if req.stream and req.prompt_logprobs is not None:
            raise APIError(
                "`prompt_logprobs` are not available when `stream=True`.", 400, "prompt_logprobs"
            )

    def check_cache_salt(self, salt: str | None) -> str | None:
        if salt is not None and not salt:
            raise APIError(
                "Parameter 'cache_salt' must be a non-empty string if provided.",
                400,
                "cache_salt",
            )
        return salt

    def sampling_params(
        self,
        req: Any,
        *,
        n: int,
        max_tokens: int,
        logprobs: int | None,
        prompt_logprobs: int | None,
        structured_outputs: StructuredOutputsParams | None = None,
    ) -> SamplingParams:
        if getattr(req, "use_beam_search", False):
            raise NotSupportedError("Beam search (use_beam_search)", "use_beam_search")
        for name, feature in (
            ("prompt_embeds", "Prompt embeddings (prompt_embeds)"),
            ("kv_transfer_params", "KV transfer (kv_transfer_params)"),
            ("vllm_xargs", "Custom sampling extensions (vllm_xargs)"),
            ("mm_processor_kwargs", "Multimodal inputs (mm_processor_kwargs)"),
        ):
            if getattr(req, name, None) is not None:
                raise NotSupportedError(feature, name)
        self.check_priority(req.priority)
        self.check_cache_salt(req.cache_salt)
        self.check_stream_fields(req)
        if req.stop is not None and not isinstance(req.stop, str):
            if len(req.stop) > self.config.max_stop_strings:
                raise APIError(
                    f"stop holds {len(req.stop)} strings; the server allows at most "
                    f"{self.config.max_stop_strings} (--max-stop-strings)",
                    400,
                    "stop",
                )
        if req.logit_bias and len(req.logit_bias) > self.config.max_logit_bias:
            raise APIError(
                f"logit_bias holds {len(req.logit_bias)} entries; the server allows at most "
                f"{self.config.max_logit_bias} (--max-logit-bias)",
                400,
                "logit_bias",
            )
        if req.allowed_token_ids is not None and not req.allowed_token_ids:
            raise APIError(
                "allowed_token_ids must hold at least one token id (it would forbid every token)",
                400,
                "allowed_token_ids",
            )
        if req.top_k is not None and req.top_k < -1:
            raise APIError(
                f"top_k must be 0 or -1 (disable), or at least 1, got {req.top_k}", 400, "top_k"
            )
        if req.logits_processors:
            raise NotSupportedError("logits_processors", "logits_processors")
        d = self.runtime.default_sampling

        def pick(name: str, fallback: Any) -> Any:
            value = getattr(req, name, None)
            if value is not None:
                return value
            return d.get(name, fallback)

        logit_bias: dict[int, float] | None = None
        if req.logit_bias:
            logit_bias = {}
            for key, value in req.logit_bias.items():
                try:
                    tok = int(key)
                except ValueError:
                    raise APIError(
                        f"logit_bias keys must be token ids, got {key!r}", 400, "logit_bias"
                    ) from None
                self.check_token_ids([tok], "logit_bias")
                logit_bias[tok] = max(-100.0, min(100.0, float(value)))
        self.check_logprobs(prompt_logprobs, "prompt_logprobs")
        try:
            return SamplingParams(
                n=n,
                presence_penalty=req.presence_penalty or 0.0,
                frequency_penalty=req.frequency_penalty or 0.0,
                repetition_penalty=pick("repetition_penalty", 1.0),
                temperature=pick("temperature", 1.0),
                top_p=pick("top_p", 1.0),
                top_k=max(0, pick("top_k", 0)),  # -1 and 0 both disable it
                min_p=pick("min_p", 0.0),
                seed=self._check_seed(req.seed),
                stop=req.stop,
                stop_token_ids=self.check_token_ids(req.stop_token_ids or [], "stop_token_ids"),
                bad_words=req.bad_words,
                ignore_eos=req.ignore_eos,
                max_tokens=max_tokens,
                min_tokens=req.min_tokens,
                logprobs=logprobs,
                prompt_logprobs=prompt_logprobs,
                skip_special_tokens=req.skip_special_tokens,
                spaces_between_special_tokens=req.spaces_between_special_tokens,
                include_stop_str_in_output=req.include_stop_str_in_output,
                logit_bias=logit_bias,
                allowed_token_ids=(
                    self.check_token_ids(req.allowed_token_ids, "allowed_token_ids")
                    if req.allowed_token_ids is not None
                    else None
                ),
                truncate_prompt_tokens=None,  # applied by the endpoint, before the length check
                # Streaming and not: the endpoints consume deltas (O(new tokens) per output).
                output_kind=RequestOutputKind.DELTA,
                structured_outputs=structured_outputs,
            )
        except ValueError as e:
            raise sampling_error(e) from e

    @staticmethod
    def _check_seed(seed: int | None) -> int | None:
        if seed is None:
            return None
        if not -(2**63) <= seed < 2**64:
            raise APIError("seed must fit in 64 bits", 400, "seed")
        # The engine's seeds are unsigned; children use seed + i, so keep room above.
        return seed % 2**63

    def content_format(self, template: str) -> str:
        fmt = self.config.chat_template_content_format
        if fmt != "auto":
            return fmt
        found = self._content_formats.get(template)
        if found is None:
            from fastlm.chat_template import detect_content_format

            found = detect_content_format(template)
            if len(self._content_formats) < 64:
                self._content_formats[template] = found
        return found

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        *,
        chat_template: str | None,
        add_generation_prompt: bool,
        continue_final_message: bool,
        documents: list[dict[str, str]] | None,
        tools: list[dict[str, Any]] | None,
        chat_template_kwargs: dict[str, Any] | None,
    ) -> str:
        import jinja2

        from fastlm.chat_template import ChatTemplateError, normalize_messages, render_chat

        try:
            template = chat_template or self.config.chat_template
            if template is None:
                template = self.tokenizer.get_chat_template(has_tools=bool(tools))
            msgs = normalize_messages(messages, self.content_format(template))  # type: ignore[arg-type]
            return render_chat(
                template,
                msgs,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
                tools=tools,
                documents=documents,
                special_tokens=self.tokenizer.special_tokens_map,
                chat_template_kwargs=chat_template_kwargs,
            )
        except ChatTemplateError as e:
            param = e.param
            if param is None and continue_final_message and add_generation_prompt:
                param = "continue_final_message"
            raise APIError(str(e), 400, param or "messages") from e
        except (jinja2.TemplateError, ValueError, TypeError, KeyError) as e:
            raise APIError(str(e) or type(e).__name__, 400, "messages") from e
