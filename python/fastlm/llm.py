"""The offline API: `LLM(model).generate(prompts, SamplingParams(...))` and `LLM.chat(...)`.

Mirrors vLLM's `vllm.LLM`: same argument names, same outputs (RequestOutput), same defaults.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from fastlm.chat_template import detect_content_format, normalize_messages, render_chat
from fastlm.outputs import RequestOutput
from fastlm.pooling import Pooler, PoolingParams
from fastlm.pooling_outputs import (
    ClassificationOutput,
    ClassificationRequestOutput,
    EmbeddingOutput,
    EmbeddingRequestOutput,
    PoolingOutput,
    PoolingRequestOutput,
    ScoringOutput,
    ScoringRequestOutput,
)
from fastlm.reasoning import get_reasoning_parser
from fastlm.runtime import EngineArgs, Runtime
from fastlm.sampling_params import SamplingParams
from fastlm.structured_outputs import check_structured_outputs_config, with_config_defaults
from fastlm.tokenizer import Tokenizer

T = TypeVar("T")

PromptType = str | dict[str, Any] | list[int]


def run_with_progress(label: str, fn: Callable[[], T], stream: Any = None) -> T:
    """Runs fn (which releases the GIL) while showing elapsed time once it passes a second."""
    stream = stream or sys.stderr
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as e:  # re-raised in the caller's thread
            error.append(e)

    thread = threading.Thread(target=target, daemon=True)
    start = time.monotonic()
    thread.start()
    shown = False
    spinner = itertools.cycle("|/-\\")
    while thread.is_alive():
        thread.join(0.2)
        elapsed = time.monotonic() - start
        if thread.is_alive() and elapsed > 1.0:
            stream.write(f"\r{label} {next(spinner)} {elapsed:5.1f}s")
            stream.flush()
            shown = True
    if shown:
        stream.write(f"\r{label} done in {time.monotonic() - start:.1f}s\n")
        stream.flush()
    if error:
        raise error[0]
    return result[0]


class LLM:
    """An engine with its tokenizer, for offline batched generation."""

    def __init__(
        self,
        model: str | None = None,
        *,
        dtype: str = "auto",
        seed: int = 0,
        max_model_len: int | None = None,
        block_size: int = 16,
        kv_cache_memory: int | None = None,
        kv_cache_fraction: float = 0.25,
        max_num_seqs: int = 256,
        max_num_batched_tokens: int | None = None,
        enable_prefix_caching: bool = True,
        scheduling_policy: str = "fcfs",
        generation_config: str = "auto",
        chat_template: str | None = None,
        runner: str = "auto",
        convert: str = "auto",
        logprobs_mode: str = "raw_logprobs",
        batch_invariant: bool | None = None,
        quantization: str | None = None,
        reasoning_parser: str | None = None,
        structured_outputs_config: dict[str, Any] | None = None,
    ) -> None:
        """`reasoning_parser` (vLLM's --reasoning-parser): outputs get `reasoning_content` and
        `content`, and structured outputs apply after the think block ends, as on the server.
        `structured_outputs_config`: vLLM's StructuredOutputsConfig keys (backend,
        disable_any_whitespace, disable_additional_properties, enable_in_reasoning)."""
        self._reasoning = get_reasoning_parser(reasoning_parser) if reasoning_parser else None
        self._so_config = dict(structured_outputs_config or {})
        check_structured_outputs_config(self._so_config)
        args = EngineArgs(
            quantization=quantization,
            runner=runner,
            convert=convert,
            logprobs_mode=logprobs_mode,
            model=model,
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            block_size=block_size,
            kv_cache_memory=kv_cache_memory,
            kv_cache_fraction=kv_cache_fraction,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            enable_prefix_caching=enable_prefix_caching,
            scheduling_policy=scheduling_policy,
            generation_config=generation_config,
            batch_invariant=batch_invariant,
        )
        self.runtime = run_with_progress("Loading model", lambda: Runtime(args))
        self.tokenizer: Tokenizer = self.runtime.tokenizer
        self.engine = self.runtime.engine
        self.max_model_len: int = self.runtime.max_model_len
        self._processor = self.runtime.processor
        print(f"fastlm: {self.runtime.describe()}", file=sys.stderr)
        self._chat_template = chat_template
        self._counter = itertools.count()
        self._think = self._reasoning.think_tokens(self.tokenizer) if self._reasoning else None

    # -- sampling defaults ------------------------------------------------------------------
    def get_default_sampling_params(self) -> SamplingParams:
        return self.runtime.default_sampling_params()

    # -- prompts -----------------------------------------------------------------------------
    def _normalize_prompts(
        self, prompts: PromptType | Sequence[PromptType]
    ) -> list[tuple[str | None, list[int]]]:
        if isinstance(prompts, str | dict):
            items: list[Any] = [prompts]
        elif isinstance(prompts, list) and prompts and all(isinstance(x, int) for x in prompts):
            items = [prompts]  # one prompt given as token ids
        else:
            items = list(prompts)
        out: list[tuple[str | None, list[int]]] = []
        for p in items:
            if isinstance(p, str):
                out.append((p, self.tokenizer.encode(p)))
            elif isinstance(p, dict) and "prompt_token_ids" in p:
                out.append((p.get("prompt"), [int(t) for t in p["prompt_token_ids"]]))
            elif isinstance(p, dict) and "prompt" in p:
                out.append((p["prompt"], self.tokenizer.encode(p["prompt"])))
            elif isinstance(p, list) and all(isinstance(t, int) for t in p):
                out.append((None, list(p)))
            else:
                raise TypeError(f"unsupported prompt type {type(p).__name__}")
        return out

    # -- generation --------------------------------------------------------------------------
    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        priority: list[int] | None = None,
    ) -> list[RequestOutput]:
        items = self._normalize_prompts(prompts)
        if sampling_params is None:
            sampling_params = self.get_default_sampling_params()
        params_list = (
            list(sampling_params)
            if isinstance(sampling_params, Sequence)
            else [sampling_params] * len(items)
        )
        if len(params_list) != len(items):
            raise ValueError("the lengths of prompts and sampling_params must be the same")
        ids: list[str] = []
        try:
            for i, ((text, tokens), params) in enumerate(zip(items, params_list, strict=True)):
                request_id = str(next(self._counter))
                ids.append(request_id)
                self.runtime.add_request(
                    request_id,
                    text,
                    tokens,
                    self._constrained(params),
                    priority[i] if priority else 0,
                )
            outputs = self._run(ids, use_tqdm)
        except BaseException:
            for rid in ids:
                self.runtime.abort(rid)
            while self.engine.has_unfinished():
                self.engine.step()
            raise
        if self._reasoning is not None:
            for out, params in zip(outputs, params_list, strict=True):
                self._split_reasoning(out, params)
        return outputs

    def _gated(self, params: SamplingParams) -> bool:
        """Whether a request's grammar waits for the end of the think block (as the server)."""
        return (
            self._think is not None
            and params.structured_outputs is not None
            and not self._so_config.get("enable_in_reasoning")
        )

    def _constrained(self, params: SamplingParams) -> SamplingParams:
        """`params` (a copy when changed) with the structured-outputs config's defaults and the
        reasoning gate."""
        if params.structured_outputs is None or not (self._so_config or self._gated(params)):
            return params
        so = with_config_defaults(dataclasses.replace(params.structured_outputs), self._so_config)
        params = dataclasses.replace(params, structured_outputs=so)
        if self._gated(params):
            params.reasoning_tags = self._think
        return params

    def _split_reasoning(self, out: RequestOutput, params: SamplingParams) -> None:
        """Each output's reasoning and content, as the server's message fields. With
        enable_in_reasoning a constrained output has no reasoning split (as the server)."""
        assert self._reasoning is not None and self._think is not None
        if params.structured_outputs is not None and not self._gated(params):
            return
        block = self._think.prompt_block(out.prompt_token_ids)
        for o in out.outputs:
            stream = self._reasoning.stream(block)
            r1, c1 = stream.feed(o.text)
            r2, c2 = stream.finish()
            o.reasoning_content = (r1 + r2) or None
            o.content = c1 + c2

    def _run(self, ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        pending = set(ids)
        final: dict[str, RequestOutput] = {}
        bar = None
        if use_tqdm:
            from tqdm import tqdm

            bar = tqdm(total=len(ids), desc="Processed prompts", dynamic_ncols=True)
        while pending:
            deltas = self.engine.step()
            outputs, to_abort = self._processor.process(deltas)
            for eid in to_abort:
                self.engine.abort(eid)
            errors = self._processor.take_errors()
            if errors:
                rid, message = next(iter(errors.items()))
                raise RuntimeError(f"request {rid} failed: {message}")
            for out in outputs:
                if out.finished and out.request_id in pending:
                    pending.discard(out.request_id)
                    final[out.request_id] = out
                    if bar is not None:
                        bar.update(1)
            if not deltas and not self.engine.has_unfinished() and pending:
                raise RuntimeError("engine went idle with requests still pending")
        # Let aborts of stop-string requests free their blocks.
        while self.engine.has_unfinished():
            self.engine.step()
        if bar is not None:
            bar.close()
        return [final[i] for i in ids]

    # -- chat --------------------------------------------------------------------------------
    def apply_chat_template(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        chat_template: str | None = None,
        chat_template_content_format: str = "auto",
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        tools: list[dict[str, Any]] | None = None,
        documents: list[dict[str, Any]] | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> str:
        template = (
            chat_template
            or self._chat_template
            or self.tokenizer.get_chat_template(has_tools=bool(tools))
        )
        fmt = chat_template_content_format
        if fmt == "auto":
            fmt = detect_content_format(template)
        msgs = normalize_messages(messages, fmt)  # type: ignore[arg-type]
        return render_chat(
            template,
            msgs,
            add_generation_prompt=add_generation_prompt and not continue_final_message,
            continue_final_message=continue_final_message,
            tools=tools,
            documents=documents,
            special_tokens=self.tokenizer.special_tokens_map,
            chat_template_kwargs=chat_template_kwargs,
        )

    def chat(
        self,
        messages: Sequence[dict[str, Any]] | Sequence[Sequence[dict[str, Any]]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        chat_template: str | None = None,
        chat_template_content_format: str = "auto",
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        tools: list[dict[str, Any]] | None = None,
        documents: list[dict[str, Any]] | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> list[RequestOutput]:
        conversations: list[Sequence[dict[str, Any]]]
        if messages and isinstance(messages[0], dict):
            conversations = [messages]  # type: ignore[list-item]
        else:
            conversations = list(messages)  # type: ignore[arg-type]
        prompts: list[PromptType] = []
        for conv in conversations:
            text = self.apply_chat_template(
                conv,
                chat_template=chat_template,
                chat_template_content_format=chat_template_content_format,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
                tools=tools,
                documents=documents,
                chat_template_kwargs=chat_template_kwargs,
            )
            # The template already holds BOS where the model wants it (as vLLM does).
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            prompts.append({"prompt": text, "prompt_token_ids": ids})
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    # -- pooling models (embeddings, classification, scores) -------------------------------
    def _pooler(self, task: str) -> Pooler:
        pooler = self.runtime.pooler
        if pooler is None:
            raise ValueError(
                f"model {self.engine.architecture} is a generative model; {task} needs a pooling "
                "model (start it with runner='pooling' to pool a decoder's last token)"
            )
        return pooler

    def _pool(
        self,
        task: str,
        inputs: list[tuple[list[int], int]],
        params: PoolingParams | None,
        use_tqdm: bool,
    ) -> list[tuple[str, list[int], Any]]:
        """Submits (tokens, token-type boundary) pairs as one batch; returns (id, tokens, data)."""
        pooler = self._pooler(task)
        task = pooler.resolve_task(task)
        ids: list[str] = []
        try:
            for tokens, boundary in inputs:
                rid = str(next(self._counter))
                pooler.add_request(rid, tokens, task, params, boundary)
                ids.append(rid)
            done: dict[str, Any] = {}
            bar = None
            if use_tqdm:
                from tqdm import tqdm

                bar = tqdm(total=len(ids), desc="Processed prompts", dynamic_ncols=True)
            while len(done) < len(ids):
                deltas = self.engine.step()
                for d in deltas:
                    if d.finished:
                        done[d.request_id] = pooler.finish(d, params)
                        if bar is not None:
                            bar.update(1)
                if not deltas and not self.engine.has_unfinished() and len(done) < len(ids):
                    raise RuntimeError("engine went idle with requests still pending")
            if bar is not None:
                bar.close()
        except BaseException:
            for rid in ids:
                self.engine.abort(rid)
            while self.engine.has_unfinished():
                self.engine.step()
            raise
        return [(rid, tokens, done[rid]) for rid, (tokens, _) in zip(ids, inputs, strict=True)]

    def _pooling_inputs(
        self, prompts: PromptType | Sequence[PromptType], truncate: int | None, task: str
    ) -> list[tuple[list[int], int]]:
        pooler = self._pooler(task)
        if isinstance(prompts, str | dict):
            items: list[Any] = [prompts]
        elif isinstance(prompts, list) and prompts and all(isinstance(x, int) for x in prompts):
            items = [prompts]
        else:
            items = list(prompts)
        out: list[tuple[list[int], int]] = []
        for p in items:
            if isinstance(p, str):
                out.append(pooler.tokenize(p, truncate=truncate))
            elif isinstance(p, dict) and "prompt_token_ids" in p:
                ids = [int(t) for t in p["prompt_token_ids"]]
                out.append((pooler.truncate_ids(ids, truncate), -1))
            elif isinstance(p, dict) and "prompt" in p:
                out.append(pooler.tokenize(p["prompt"], truncate=truncate))
            elif isinstance(p, list) and all(isinstance(t, int) for t in p):
                out.append((pooler.truncate_ids(list(p), truncate), -1))
            else:
                raise TypeError(f"unsupported prompt type {type(p).__name__}")
        return out

    def embed(
        self,
        prompts: PromptType | Sequence[PromptType],
        *,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = True,
        pooling_params: PoolingParams | None = None,
    ) -> list[EmbeddingRequestOutput]:
        """One embedding per prompt (vLLM's LLM.embed)."""
        params = pooling_params or PoolingParams(truncate_prompt_tokens=truncate_prompt_tokens)
        inputs = self._pooling_inputs(prompts, params.truncate_prompt_tokens, "embed")
        return [
            EmbeddingRequestOutput(rid, EmbeddingOutput(data.tolist()), tokens)
            for rid, tokens, data in self._pool("embed", inputs, params, use_tqdm)
        ]

    def classify(
        self,
        prompts: PromptType | Sequence[PromptType],
        *,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = True,
        pooling_params: PoolingParams | None = None,
    ) -> list[ClassificationRequestOutput]:
        """Class probabilities per prompt (vLLM's LLM.classify)."""
        params = pooling_params or PoolingParams(truncate_prompt_tokens=truncate_prompt_tokens)
        inputs = self._pooling_inputs(prompts, params.truncate_prompt_tokens, "classify")
        return [
            ClassificationRequestOutput(rid, ClassificationOutput(data.tolist()), tokens)
            for rid, tokens, data in self._pool("classify", inputs, params, use_tqdm)
        ]

    def encode(
        self,
        prompts: PromptType | Sequence[PromptType],
        pooling_params: PoolingParams | None = None,
        *,
        use_tqdm: bool = True,
        pooling_task: str | None = None,
    ) -> list[PoolingRequestOutput]:
        """The raw pooled data (vLLM's LLM.encode): pooling_task 'encode' (default: the model's
        pooling, no normalization), 'embed', 'classify' or 'token_embed' (every token's)."""
        task = pooling_task or "encode"
        params = pooling_params or PoolingParams()
        inputs = self._pooling_inputs(prompts, params.truncate_prompt_tokens, task)
        return [
            PoolingRequestOutput(rid, PoolingOutput(data), tokens)
            for rid, tokens, data in self._pool(task, inputs, params, use_tqdm)
        ]

    def score(
        self,
        text_1: str | Sequence[str],
        text_2: str | Sequence[str],
        /,
        *,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = True,
        pooling_params: PoolingParams | None = None,
    ) -> list[ScoringRequestOutput]:
        """vLLM's LLM.score: 1:1, 1:N or N:N pairs. A cross-encoder scores each pair with its
        classifier probability; an embedding model with the cosine of the two embeddings."""
        pooler = self._pooler("score")
        pooler.resolve_task("score")
        firsts = [text_1] if isinstance(text_1, str) else list(text_1)
        seconds = [text_2] if isinstance(text_2, str) else list(text_2)
        if len(firsts) == 1:
            firsts = firsts * len(seconds)
        if len(firsts) != len(seconds):
            raise ValueError("text_1 and text_2 must have the same length (or text_1 one item)")
        if not seconds:
            return []
        params = pooling_params or PoolingParams(truncate_prompt_tokens=truncate_prompt_tokens)
        if pooler.config.is_cross_encoder:
            inputs = [
                pooler.tokenize(a, b, params.truncate_prompt_tokens)
                for a, b in zip(firsts, seconds, strict=True)
            ]
            results = self._pool("score", inputs, params, use_tqdm)
            return [
                ScoringRequestOutput(rid, ScoringOutput(float(data[0])), tokens)
                for rid, tokens, data in results
            ]
        texts = list(dict.fromkeys(firsts + seconds))
        inputs = [pooler.tokenize(t, truncate=params.truncate_prompt_tokens) for t in texts]
        embedded = {
            t: (rid, tokens, data)
            for t, (rid, tokens, data) in zip(
                texts, self._pool("embed", inputs, params, use_tqdm), strict=True
            )
        }
        out: list[ScoringRequestOutput] = []
        for a, b in zip(firsts, seconds, strict=True):
            rid_a, tok_a, va = embedded[a]
            rid_b, tok_b, vb = embedded[b]
            cos = float(np.dot(va, vb) / max(np.linalg.norm(va) * np.linalg.norm(vb), 1e-12))
            out.append(ScoringRequestOutput(f"{rid_a}_{rid_b}", ScoringOutput(cos), tok_a + tok_b))
        return out
