"""/v1/audio/transcriptions and /v1/audio/translations (OpenAI's multipart API, vLLM's extras).

The upload is decoded to 16 kHz mono, split into <= 30 s windows at quiet points, and every
window becomes one engine request (log-mel features + Whisper's decoder prompt); the windows
decode concurrently and their texts are stitched in order. verbose_json, srt and vtt decode with
Whisper's timestamp tokens: segments come from them, shifted by each window's offset. With a
temperature list (Whisper's fallback) a window whose text compresses too well or whose average
logprob is too low is decoded again at the next temperature. Streaming sends vLLM's
`transcription.chunk` (`translation.chunk`) deltas, window after window. A multilingual model
given no `language` detects it first, as vLLM does: one engine request over the first window
whose single greedy step may only pick a language token.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from litestar import Request, Response, post
from litestar.datastructures import UploadFile
from litestar.response import Stream

from fastlm import audio
from fastlm.outputs import RequestOutput
from fastlm.sampling_params import RequestOutputKind, SamplingParams
from fastlm.server.errors import APIError
from fastlm.server.serving import (
    SSE_DONE,
    Context,
    engine_error,
    engine_request_id,
    merge_streams,
    now,
    sampling_error,
    sse,
    until_disconnect,
)
from fastlm.whisper import (
    LANGUAGES,
    WhisperRequestError,
    WhisperTokens,
    split_segments,
    whisper_tokens,
)

Handler = Callable[[Context, Request[Any, Any, Any], bytes], Awaitable[Any]]

RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
# Form fields of OpenAI's and vLLM's transcription requests that fastlm honours.
_KNOWN = {
    "file",
    "model",
    "language",
    "prompt",
    "response_format",
    "temperature",
    "timestamp_granularities[]",
    "timestamp_granularities",
    "stream",
    "stream_include_usage",
    "stream_continuous_usage_stats",
    "seed",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "frequency_penalty",
    "presence_penalty",
    "max_completion_tokens",
    "compression_ratio_threshold",
    "logprob_threshold",
}
# Formats whose segments carry times: these decode with timestamp tokens.
TIMED_FORMATS = ("verbose_json", "srt", "vtt")
# Whisper's fallback thresholds (openai-whisper's transcribe() defaults).
COMPRESSION_RATIO_THRESHOLD = 2.4
LOGPROB_THRESHOLD = -1.0
DEFAULT_MAX_AUDIO_BYTES = 25 * 2**20


@dataclass
class AudioRequest:
    file: bytes
    model: str | None = None
    language: str | None = None
    prompt: str | None = None
    response_format: str = "json"
    temperature: float = 0.0
    # More than one: Whisper's temperature fallback, tried in order (`temperature` is the first).
    temperatures: list[float] = field(default_factory=lambda: [0.0])
    compression_ratio_threshold: float | None = None
    logprob_threshold: float | None = None
    timestamp_granularities: list[str] = field(default_factory=lambda: ["segment"])
    stream: bool = False
    stream_include_usage: bool = False
    stream_continuous_usage_stats: bool = False
    seed: int | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    max_completion_tokens: int | None = None


def _parse_bool(value: str, name: str) -> bool:
    v = value.strip().lower()
    if v in ("true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off", ""):
        return False
    raise APIError(f"{name} must be a boolean, got {value!r}", 400, name, "invalid_type")


def _parse_number(value: str, name: str, kind: type) -> Any:
    try:
        out = kind(value)
    except ValueError:
        raise APIError(
            f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}",
            400,
            name,
            "invalid_type",
        ) from None
    if kind is float and not math.isfinite(out):
        raise APIError(f"{name} must be finite, got {value!r}", 400, name)
    return out


async def parse_audio_request(request: Request[Any, Any, Any], max_bytes: int) -> AudioRequest:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise APIError(
            "audio requests are multipart/form-data with the audio in the `file` field",
            400,
            "file",
        )
    form = await request.form()
    unknown = sorted(k for k in form.keys() if k not in _KNOWN)
    if unknown:
        raise APIError(
            f"unsupported field {unknown[0]!r} (fastlm does not implement it)", 400, unknown[0]
        )
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise APIError("the `file` field (the audio file) is required", 400, "file")
    data = await upload.read()
    if len(data) > max_bytes:
        raise APIError(
            f"the audio file is {len(data)} bytes; the server accepts at most {max_bytes} "
            "(--max-audio-file-size)",
            413,
            "file",
            "file_too_large",
        )
    req = AudioRequest(file=data)

    def text(name: str) -> str | None:
        v = form.get(name)
        if v is None:
            return None
        if not isinstance(v, str):
            raise APIError(f"{name} must be a text field", 400, name)
        return v

    req.model = text("model")
    req.language = text("language") or None
    req.prompt = text("prompt") or None
    fmt = text("response_format")
    if fmt is not None:
        if fmt not in RESPONSE_FORMATS:
            raise APIError(
                f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, got {fmt!r}",
                400,
                "response_format",
            )
        req.response_format = fmt
    grans = [g for k in ("timestamp_granularities[]", "timestamp_granularities") for g in
             form.getall(k, [])]  # fmt: skip
    if grans:
        for g in grans:
            if g not in ("segment", "word"):
                raise APIError(
                    f"timestamp_granularities holds {g!r}; allowed: segment, word",
                    400,
                    "timestamp_granularities",
                )
            if g == "word":
                raise APIError(
                    "word timestamps are not supported by fastlm (segment timestamps are)",
                    400,
                    "timestamp_granularities",
                    "not_supported",
                )
        if req.response_format != "verbose_json":
            raise APIError(
                "timestamp_granularities needs response_format verbose_json",
                400,
                "timestamp_granularities",
            )
        req.timestamp_granularities = list(grans)
    for name in ("stream", "stream_include_usage", "stream_continuous_usage_stats"):
        v = text(name)
        if v is not None:
            setattr(req, name, _parse_bool(v, name))
    temp = text("temperature")
    if temp is not None and temp.strip() != "":
        # "0.0,0.2,0.4": Whisper's temperature fallback list.
        req.temperatures = [_parse_number(t, "temperature", float) for t in temp.split(",")]
        req.temperature = req.temperatures[0]
    for name, kind in (
        ("compression_ratio_threshold", float),
        ("logprob_threshold", float),
        ("top_p", float),
        ("min_p", float),
        ("repetition_penalty", float),
        ("frequency_penalty", float),
        ("presence_penalty", float),
        ("seed", int),
        ("top_k", int),
        ("max_completion_tokens", int),
    ):
        v = text(name)
        if v is not None and v != "":
            setattr(req, name, _parse_number(v, name, kind))
    if any(t < 0 for t in req.temperatures):
        raise APIError(f"temperature must be >= 0, got {temp}", 400, "temperature")
    fallback = len(req.temperatures) > 1
    for name in ("compression_ratio_threshold", "logprob_threshold"):
        if getattr(req, name) is not None and not fallback:
            raise APIError(
                f"{name} applies to Whisper's temperature fallback; give temperature as a list "
                "(e.g. 0.0,0.2,0.4,0.6,0.8,1.0)",
                400,
                name,
            )
    if fallback and req.stream:
        raise APIError(
            "a temperature list (fallback) cannot stream: a window may be decoded again",
            400,
            "temperature",
        )
    if req.stream and req.response_format not in ("json", "text"):
        raise APIError(
            f"stream is only available with response_format json or text, not "
            f"{req.response_format}",
            400,
            "stream",
        )
    if (req.stream_include_usage or req.stream_continuous_usage_stats) and not req.stream:
        raise APIError("stream_include_usage needs stream=true", 400, "stream_include_usage")
    return req


# -- formatting --------------------------------------------------------------------------------
def _clock(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(segments: list[dict[str, Any]]) -> str:
    return "".join(
        f"{i + 1}\n{_clock(s['start'], ',')} --> {_clock(s['end'], ',')}\n{s['text'].strip()}\n\n"
        for i, s in enumerate(segments)
    )


def to_vtt(segments: list[dict[str, Any]]) -> str:
    return "WEBVTT\n\n" + "".join(
        f"{_clock(s['start'], '.')} --> {_clock(s['end'], '.')}\n{s['text'].strip()}\n\n"
        for s in segments
    )


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


# -- the endpoint ------------------------------------------------------------------------------
@dataclass
class _Window:
    chunk: audio.AudioChunk
    request_id: str
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprob_sum: float = 0.0
    finish_reason: str | None = None
    temperature: float = 0.0

    def restart(self, request_id: str, temperature: float) -> None:
        self.request_id, self.temperature = request_id, temperature
        self.text, self.token_ids, self.logprob_sum, self.finish_reason = [], [], 0.0, None

    def avg_logprob(self) -> float:
        return self.logprob_sum / max(1, len(self.token_ids))


class Speech:
    """Per-server speech state: the model's Whisper tokens (None for a text model)."""

    def __init__(self, ctx: Context) -> None:
        engine = ctx.runtime.engine
        self.tokens: WhisperTokens | None = None
        self.n_mels = 0
        if getattr(engine, "is_encoder_decoder", False):
            self.tokens = whisper_tokens(ctx.runtime.files, ctx.tokenizer, int(engine.vocab_size))
            self.n_mels = int(engine.encoder_input_shape[0])


_SPEECH: dict[int, Speech] = {}


def refuse_speech_model(ctx: Context, route: str) -> None:
    """A Whisper model serves the audio routes only: elsewhere a 400 naming its task."""
    if getattr(ctx.runtime.engine, "is_encoder_decoder", False):
        raise APIError(
            "this model is a speech-to-text (Whisper) model: it serves /v1/audio/transcriptions "
            f"and /v1/audio/translations, not {route}",
            400,
            "model",
            "wrong_task",
        )


def speech_of(ctx: Context) -> Speech:
    s = _SPEECH.get(id(ctx))
    if s is None:
        s = _SPEECH[id(ctx)] = Speech(ctx)
    return s


async def create_audio(
    ctx: Context, request: Request[Any, Any, Any], task: str, max_bytes: int
) -> Response[Any] | Stream:
    arrival = time.monotonic()
    speech = speech_of(ctx)
    route = "/v1/audio/translations" if task == "translate" else "/v1/audio/transcriptions"
    if speech.tokens is None:
        raise APIError(
            f"model {ctx.runtime.engine.architecture} is a text model; {route} needs a speech "
            "(Whisper) model",
            400,
            "model",
        )
    req = await parse_audio_request(request, max_bytes)
    ctx.check_model(req.model)
    tokens = speech.tokens
    prompt_ids = (
        ctx.tokenizer.encode(" " + req.prompt.strip(), add_special_tokens=False)
        if req.prompt
        else None
    )
    timed = req.response_format in TIMED_FORMATS
    try:
        language = tokens.resolve_language(req.language)  # None: detect it
        # Checks task, prompt and timestamps before the audio is read; a detected language
        # replaces the stand-in below.
        decoder_prompt = tokens.decoder_prompt(language or "en", task, prompt_ids, timed)
    except WhisperRequestError as e:
        raise APIError(str(e), 400, e.param) from None
    try:
        samples = await asyncio.to_thread(audio.decode_audio, req.file)
    except audio.AudioError as e:
        raise APIError(str(e), 400, "file", "invalid_audio") from None
    duration = samples.shape[0] / audio.SAMPLE_RATE
    chunks = audio.split_audio(samples)
    features = await asyncio.to_thread(audio.log_mel_chunks, chunks, speech.n_mels)
    room = int(ctx.runtime.engine.max_decoder_len) - len(decoder_prompt)
    if req.max_completion_tokens is not None and req.max_completion_tokens < 1:
        raise APIError("max_completion_tokens must be >= 1", 400, "max_completion_tokens")
    max_tokens = min(room, req.max_completion_tokens or room)
    try:
        params = SamplingParams(
            temperature=req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=0 if req.top_k is None else req.top_k,
            min_p=req.min_p or 0.0,
            seed=req.seed,
            repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
            frequency_penalty=req.frequency_penalty or 0.0,
            presence_penalty=req.presence_penalty or 0.0,
            max_tokens=max_tokens,
            logprobs=0,
            output_kind=RequestOutputKind.DELTA,
        )
    except ValueError as e:
        raise sampling_error(e) from None
    base = f"{'trsl' if task == 'translate' else 'trsc'}-{uuid.uuid4().hex}"
    if language is None:
        try:
            language = await until_disconnect(
                request, _detect_language(ctx, tokens, features[0], base)
            )
        except ValueError as e:
            raise engine_error(e) from None
        decoder_prompt = tokens.decoder_prompt(language, task, prompt_ids, timed)  # same length
    windows = [
        _Window(
            c,
            engine_request_id(f"{base}-{i}") if len(chunks) > 1 else engine_request_id(base),
            temperature=req.temperature,
        )
        for i, c in enumerate(chunks)
    ]
    suppress = (tokens.suppress_tokens, tokens.begin_suppress_tokens)
    timestamp_begin = tokens.timestamp_begin if timed else None
    ts = -1 if timestamp_begin is None else timestamp_begin

    def submit(i: int, p: SamplingParams) -> AsyncIterator[RequestOutput]:
        return ctx.engine.transcribe(
            windows[i].request_id, features[i], decoder_prompt, p, suppress, timestamp_begin=ts
        )

    ctx.metrics.observe_audio(duration)
    model_name = ctx.check_model(req.model)
    if req.stream:
        streams = [submit(i, params) for i in range(len(windows))]
        stream = _stream(ctx, windows, streams, base, model_name, req, task, len(decoder_prompt))
        return Stream(stream, media_type="text/event-stream")

    async def decode(i: int) -> None:
        """One window, at each temperature of the list until it passes Whisper's checks."""
        w = windows[i]
        for attempt, temperature in enumerate(req.temperatures):
            if attempt:
                w.restart(engine_request_id(f"{base}-{i}-t{attempt}"), temperature)
            async for out in submit(i, dataclasses.replace(params, temperature=temperature)):
                _absorb(w, out)
            if not _needs_fallback(w, req):
                break

    async def collect() -> None:
        await asyncio.gather(*(decode(i) for i in range(len(windows))))

    try:
        await until_disconnect(request, collect())
    except ValueError as e:
        raise engine_error(e) from None
    ctx.metrics.observe_audio_done(arrival, [w.finish_reason for w in windows])
    return _respond(ctx, tokens, windows, req, task, language, duration, timestamp_begin)


async def _detect_language(
    ctx: Context, tokens: WhisperTokens, features: audio.FloatArray, base: str
) -> str:
    """The spoken language of a window, as Whisper and vLLM detect it: the decoder's greedy
    choice among the language tokens right after <|startoftranscript|>."""
    params = SamplingParams(
        temperature=0.0,
        max_tokens=1,
        allowed_token_ids=tokens.language_token_ids,
        output_kind=RequestOutputKind.DELTA,
    )
    ids: list[int] = []
    rid = engine_request_id(f"{base}-lang")
    async for out in ctx.engine.transcribe(rid, features, [tokens.sot], params, ([], [])):
        ids += [t for o in out.outputs for t in o.token_ids]
    return tokens.language_of(ids[0])


def _needs_fallback(w: _Window, req: AudioRequest) -> bool:
    """Whisper's test of a decoded window: too repetitive (its text compresses better than
    compression_ratio_threshold) or too unsure (average logprob below logprob_threshold)."""
    if len(req.temperatures) < 2:
        return False
    ratio = req.compression_ratio_threshold or COMPRESSION_RATIO_THRESHOLD
    logprob = LOGPROB_THRESHOLD if req.logprob_threshold is None else req.logprob_threshold
    return compression_ratio(_window_text(w)) > ratio or w.avg_logprob() < logprob


def _absorb(w: _Window, out: RequestOutput) -> str:
    piece = ""
    for o in out.outputs:
        piece += o.text
        w.token_ids += o.token_ids
        if o.logprobs:
            for step, tok in zip(o.logprobs, o.token_ids, strict=False):
                lp = step.get(tok)
                if lp is not None:
                    w.logprob_sum += lp.logprob
        if o.finish_reason is not None:
            w.finish_reason = o.finish_reason
    w.text.append(piece)
    return piece


def _window_text(w: _Window) -> str:
    return "".join(w.text).strip()


def _window_segments(
    ctx: Context, tokens: WhisperTokens, w: _Window, timestamp_begin: int | None
) -> list[tuple[float, float, list[int], str]]:
    """(start, end, tokens, text) of a window's segments, in seconds from the window's start:
    read off its timestamp tokens, or the whole window as one segment without them."""
    length = w.chunk.samples.shape[0] / audio.SAMPLE_RATE
    if timestamp_begin is None:
        text = _window_text(w)
        return [(0.0, length, w.token_ids, " " + text if text else "")]
    return [
        (s.start, s.end, s.tokens, ctx.tokenizer.decode(s.text_tokens, skip_special_tokens=True))
        for s in split_segments(w.token_ids, timestamp_begin, tokens.eot, length)
    ]


def _respond(
    ctx: Context,
    tokens: WhisperTokens,
    windows: list[_Window],
    req: AudioRequest,
    task: str,
    language: str,
    duration: float,
    timestamp_begin: int | None,
) -> Response[Any]:
    segments: list[dict[str, Any]] = []
    texts = []
    for w in windows:
        start = w.chunk.offset_seconds
        window_text = _window_text(w)
        per_window = {
            "seek": int(round(start * 100)),  # in 10 ms frames, as Whisper's seek
            "temperature": w.temperature,
            "avg_logprob": w.avg_logprob(),
            "compression_ratio": compression_ratio(window_text),
            # fastlm does not score <|nospeech|> (it would need the prompt's logprobs).
            "no_speech_prob": 0.0,
        }
        parts = _window_segments(ctx, tokens, w, timestamp_begin)
        texts.append("".join(p[3] for p in parts).strip())
        for seg_start, seg_end, seg_tokens, seg_text in parts:
            segments.append(
                {
                    "id": len(segments),
                    "start": round(start + seg_start, 3),
                    "end": round(start + seg_end, 3),
                    "text": seg_text,
                    "tokens": seg_tokens,
                    **per_window,
                }
            )
    text = " ".join(t for t in texts if t)
    fmt = req.response_format
    if fmt == "text":
        return Response(text, media_type="text/plain")
    if fmt == "srt":
        return Response(to_srt(segments), media_type="text/plain")
    if fmt == "vtt":
        return Response(to_vtt(segments), media_type="text/vtt")
    body: dict[str, Any] = {"text": text}
    if fmt == "verbose_json":
        body = {
            "task": task,
            # A translation's is its output's (OpenAI: "always english").
            "language": LANGUAGES["en" if task == "translate" else language],
            "duration": round(duration, 3),
            "text": text,
            "segments": segments,
        }
    if task == "transcribe":  # translations carry no usage (OpenAI's and vLLM's responses)
        body["usage"] = {"type": "duration", "seconds": int(math.ceil(duration))}
    return Response(msgspec.json.encode(body), media_type="application/json")


async def _stream(
    ctx: Context,
    windows: list[_Window],
    streams: list[AsyncIterator[RequestOutput]],
    base: str,
    model_name: str,
    req: AudioRequest,
    task: str,
    num_prompt: int,
) -> AsyncIterator[bytes]:
    """vLLM's SSE: `transcription.chunk` (`translation.chunk`) objects with
    choices[0].delta.content, windows in order (later windows decode concurrently and are held
    back until their turn): every window's text is at least one chunk of its own."""
    kind = "translation.chunk" if task == "translate" else "transcription.chunk"
    created = now()
    current = 0
    pending: dict[int, list[str]] = {}
    done: set[int] = set()
    completion_tokens = 0

    def chunk(content: str, finish: str | None, usage: dict[str, int] | None = None) -> bytes:
        body: dict[str, Any] = {
            "id": base,
            "object": kind,
            "created": created,
            "model": model_name,
            "choices": [{"delta": {"content": content}, "finish_reason": finish,
                         "stop_reason": None}],
        }  # fmt: skip
        if usage is not None:
            body["usage"] = usage
        return sse(msgspec.json.encode(body))

    def usage_now() -> dict[str, int]:
        prompt = num_prompt * len(windows)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
        }

    try:
        async for i, out in merge_streams(streams):
            w = windows[i]
            first_piece = not w.text
            piece = _absorb(w, out)
            completion_tokens += sum(len(o.token_ids) for o in out.outputs)
            if first_piece and i > 0:
                piece = " " + piece.lstrip()  # windows are joined by one space
            elif first_piece:
                piece = piece.lstrip()
            pending.setdefault(i, []).append(piece)
            if w.finish_reason is not None:
                done.add(i)
            while current < len(windows):
                text = "".join(pending.pop(current, []))
                last = current == len(windows) - 1 and current in done
                if text or last:
                    usage = usage_now() if req.stream_continuous_usage_stats else None
                    yield chunk(text, windows[-1].finish_reason if last else None, usage)
                if current in done:
                    current += 1
                else:
                    break
    except ValueError as e:
        err = engine_error(e)
        error = {"message": err.message, "type": "BadRequestError", "code": err.status}
        yield sse(msgspec.json.encode({"error": error}))
        return
    if req.stream_include_usage:
        body = {
            "id": base,
            "object": kind,
            "created": created,
            "model": model_name,
            "choices": [],
            "usage": usage_now(),
        }
        yield sse(msgspec.json.encode(body))
    yield SSE_DONE


def audio_routes(
    run: Callable[[Handler, Request[Any, Any, Any]], Awaitable[Any]], max_bytes: int
) -> list[Any]:
    """The audio route handlers; `run` is app.py's wrapper (engine readiness, body read).
    Their body limit is the upload limit plus multipart overhead; other routes keep theirs."""
    limit = max_bytes + 2**20

    async def transcribe(ctx: Context, request: Request[Any, Any, Any], body: bytes) -> Any:
        return await create_audio(ctx, request, "transcribe", max_bytes)

    async def translate(ctx: Context, request: Request[Any, Any, Any], body: bytes) -> Any:
        return await create_audio(ctx, request, "translate", max_bytes)

    @post("/v1/audio/transcriptions", status_code=200, request_max_body_size=limit)
    async def transcriptions(request: Request[Any, Any, Any]) -> Any:
        return await run(transcribe, request)

    @post("/v1/audio/translations", status_code=200, request_max_body_size=limit)
    async def translations(request: Request[Any, Any, Any]) -> Any:
        return await run(translate, request)

    return [transcriptions, translations]
