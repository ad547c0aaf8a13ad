"""The offline API: `LLM(model).generate(prompts, SamplingParams(...))` and `LLM.chat(...)`.

Mirrors vLLM's `vllm.LLM`: same argument names, same outputs (RequestOutput), same defaults.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from fastlm.chat_template import detect_content_format, normalize_messages, render_chat
from fastlm.outputs import RequestOutput
from fastlm.runtime import EngineArgs, Runtime
from fastlm.sampling_params import SamplingParams
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
    ) -> None:
        args = EngineArgs(
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
        )
        self.runtime = run_with_progress("Loading model", lambda: Runtime(args))
        self.tokenizer: Tokenizer = self.runtime.tokenizer
        self.engine = self.runtime.engine
        self.max_model_len: int = self.runtime.max_model_len
        self._processor = self.runtime.processor
        print(f"fastlm: {self.runtime.describe()}", file=sys.stderr)
        self._chat_template = chat_template
        self._counter = itertools.count()

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
                    request_id, text, tokens, params, priority[i] if priority else 0
                )
            return self._run(ids, use_tqdm)
        except BaseException:
            for rid in ids:
                self.runtime.abort(rid)
            while self.engine.has_unfinished():
                self.engine.step()
            raise

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
