"""/v1/audio/transcriptions and /v1/audio/translations on a real server over the real tiny.en
(CTranslate2) model and a multilingual tiny random checkpoint (large-v3's layout), through
OpenAI's official client."""

from __future__ import annotations

import concurrent.futures
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from fastlm import audio
from fixtures_server import start_server
from tiny_models import tiny_whisper
from whisper_data import pyav_bytes, speak, tiny_en_dir, wav_bytes

MODEL = "whisper-tiny.en"
SENTENCE = "The quick brown fox jumps over the lazy dog."
SECOND = "She sells sea shells by the sea shore."


def _runtime(model: Path) -> Any:
    from fastlm.runtime import EngineArgs, Runtime

    return Runtime(EngineArgs(model=str(model), dtype="float32", kv_cache_memory=256 * 2**20))


@pytest.fixture(scope="module")
def whisper_runtime() -> Any:
    return _runtime(tiny_en_dir())


@pytest.fixture(scope="module")
def whisper_server(whisper_runtime: Any) -> Iterator[Any]:
    srv = start_server(whisper_runtime, served_model_names=[MODEL])
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(whisper_server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=whisper_server.url + "/v1", api_key="x", max_retries=0)


@pytest.fixture(scope="module")
def speech() -> bytes:
    return wav_bytes(speak(SENTENCE))


def _transcribe(client: openai.OpenAI, data: bytes, **kw: Any) -> Any:
    return client.audio.transcriptions.create(model=MODEL, file=("speech.wav", data), **kw)


def test_every_response_format(client: openai.OpenAI, speech: bytes) -> None:
    js = _transcribe(client, speech, response_format="json", temperature=0.0)
    text = js.text
    assert "quick" in text.lower() and "lazy dog" in text.lower(), text
    assert _transcribe(client, speech, response_format="text").strip() == text
    verbose = _transcribe(
        client, speech, response_format="verbose_json", timestamp_granularities=["segment"]
    )
    assert verbose.language == "english"
    duration = len(speak(SENTENCE)) / 16000
    assert abs(verbose.duration - duration) < 0.01
    # Segments from Whisper's timestamp tokens: in order, covering the speech, their texts
    # making up the text.
    segs = verbose.segments
    assert segs and verbose.text == "".join(s.text for s in segs).strip()
    assert segs[0].start < 1.0 and segs[-1].end > duration - 1.5, segs
    for a, b in zip(segs, segs[1:], strict=False):
        assert a.start < a.end <= b.start, segs
    assert segs[-1].end <= duration + 1e-3
    assert all(s.avg_logprob < 0 and any(t >= 50363 for t in s.tokens) for s in segs)
    assert "quick" in verbose.text.lower() and "lazy dog" in verbose.text.lower(), verbose.text
    cue = r"(\d\d):(\d\d):(\d\d)[,.](\d\d\d) --> (\d\d):(\d\d):(\d\d)[,.](\d\d\d)\n(.+)\n\n"
    srt = _transcribe(client, speech, response_format="srt")
    assert re.fullmatch(r"(?:\d+\n" + cue + ")+", srt), srt
    cues = re.findall(r"(\d+)\n" + cue, srt)
    assert [int(c[0]) for c in cues] == list(range(1, len(segs) + 1)), srt
    assert [c[-1] for c in cues] == [s.text.strip() for s in segs]
    vtt = _transcribe(client, speech, response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n")
    assert [c[-1] for c in re.findall(cue, vtt)] == [s.text.strip() for s in segs], vtt


def test_temperature_fallback(client: openai.OpenAI, speech: bytes) -> None:
    """Whisper's fallback: clean speech passes at the first temperature (the greedy result);
    a threshold nothing passes walks the list to its end."""
    greedy = _transcribe(client, speech, response_format="verbose_json")
    first = _transcribe(client, speech, response_format="verbose_json", temperature="0.0,0.6")
    assert first.text == greedy.text and {s.temperature for s in first.segments} == {0.0}
    last = _transcribe(
        client,
        speech,
        response_format="verbose_json",
        temperature="0.0,0.5,1.0",
        extra_body={"logprob_threshold": 0.0, "seed": 3},
    )
    assert {s.temperature for s in last.segments} == {1.0}, last.segments


@pytest.mark.parametrize(
    ("name", "container", "codec"),
    [("speech.m4a", "mp4", "aac"), ("speech.webm", "webm", "libopus")],
)
def test_pyav_formats(client: openai.OpenAI, name: str, container: str, codec: str) -> None:
    """m4a and webm (which libsndfile cannot read) decode through PyAV."""
    data = pyav_bytes(speak(SENTENCE), container, codec)
    out = client.audio.transcriptions.create(model=MODEL, file=(name, data))
    assert "quick" in out.text.lower() and "lazy" in out.text.lower(), out.text


def _two_windows() -> np.ndarray:
    """~31 s: SENTENCE, silence, SECOND: split into two windows in the silence."""
    a, b = speak(SENTENCE), speak(SECOND)
    samples = np.concatenate([a, np.zeros(28 * 16000 - len(a), np.float32), b])
    assert len(audio.split_audio(samples)) == 2
    return samples


def _sse(chunks: Any) -> tuple[list[str], list[dict[str, Any]], str | None, dict[str, Any] | None]:
    """(content deltas, chunks with choices, finish reason, final usage) of an SSE stream."""
    pieces, with_choices, usage, finish = [], [], None, None
    for chunk in chunks:
        data = chunk if isinstance(chunk, dict) else chunk.model_dump()
        if data["choices"]:
            with_choices.append(data)
            pieces.append(data["choices"][0]["delta"]["content"])
            finish = data["choices"][0]["finish_reason"] or finish
        elif data.get("usage"):
            usage = data["usage"]
    return pieces, with_choices, finish, usage


def test_streaming_equals_non_streaming(client: openai.OpenAI) -> None:
    """Streamed deltas add up to the non-streamed text. The audio spans two windows, and the
    server sends each window's text in chunks of its own (windows are never merged into one
    delta), so there are at least two content deltas however loaded the machine is (an engine
    step's tokens may arrive coalesced with the next step's)."""
    data = wav_bytes(_two_windows())
    text = _transcribe(client, data).text
    assert "quick" in text.lower() and "sea" in text.lower(), text
    stream = _transcribe(
        client,
        data,
        stream=True,
        extra_body={"stream_include_usage": True, "stream_continuous_usage_stats": True},
    )
    pieces, chunks, finish, usage = _sse(stream)
    assert all(c["object"] == "transcription.chunk" for c in chunks)
    assert "".join(pieces) == text and finish == "stop"
    assert len([p for p in pieces if p]) >= 2, pieces  # deltas, not one blob
    # Continuous usage: each chunk counts the tokens so far; the final usage chunk them all.
    counts = [c["usage"]["completion_tokens"] for c in chunks]
    assert counts == sorted(counts) and counts[0] > 0, counts
    assert usage is not None and usage["completion_tokens"] == counts[-1] > 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_concurrent_equals_sequential(client: openai.OpenAI) -> None:
    texts = (SENTENCE, SECOND, "Open the pod bay doors, please.", "One two three four five six.")
    clips = [wav_bytes(speak(t)) for t in texts]
    sequential = [_transcribe(client, c).text for c in clips]
    assert len(set(sequential)) == 4
    # 8 at once (each clip twice): the engine batches their encoders and decoders.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        concurrent_ = list(pool.map(lambda c: _transcribe(client, c).text, clips * 2))
    assert concurrent_ == sequential * 2


def test_long_audio_is_split_and_stitched(client: openai.OpenAI) -> None:
    rate = 16000
    a, b = speak(SENTENCE), speak(SECOND)
    gap = np.zeros(rate, np.float32)
    # ~25 s of near-silence between: the first window ends in it, before 30 s.
    filler = (np.random.default_rng(0).standard_normal(25 * rate) * 1e-4).astype(np.float32)
    samples = np.concatenate([a, gap, filler, gap, b, gap])
    assert len(samples) > 30 * rate
    out = _transcribe(client, wav_bytes(samples), response_format="verbose_json")
    # Timestamps of the second window are shifted by its offset (it starts in the filler).
    late = [seg for seg in out.segments if seg.start > 25]
    assert late and len(late) < len(out.segments), out.segments
    assert "sea" in "".join(seg.text for seg in late).lower()
    assert all(a.end <= b.start for a, b in zip(out.segments, out.segments[1:], strict=False))
    low = out.text.lower()
    assert "quick" in low and "sea" in low, out.text
    assert low.index("quick") < low.index("sea")


def _post(url: str, data: bytes | None, **fields: str) -> httpx.Response:
    files = {"file": ("a.wav", data)} if data is not None else None
    return httpx.post(url + "/v1/audio/transcriptions", data=fields, files=files, timeout=60)


def test_disconnect_mid_decode_frees_blocks(
    whisper_server: Any, whisper_runtime: Any, speech: bytes
) -> None:
    engine = whisper_runtime.engine
    with httpx.stream(
        "POST",
        whisper_server.url + "/v1/audio/transcriptions",
        data={"model": MODEL, "stream": "true"},
        files={"file": ("a.wav", speech)},
        timeout=60,
    ) as r:
        assert r.status_code == 200
        next(r.iter_lines())  # the first delta: the request is decoding
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        s = engine.stats()
        if s.num_running == 0 and s.num_free_blocks == engine.num_blocks:
            break
        time.sleep(0.1)
    s = engine.stats()
    assert s.num_running == 0 and s.num_free_blocks == engine.num_blocks


def test_errors(whisper_server: Any, client: openai.OpenAI, speech: bytes) -> None:
    url = whisper_server.url
    with pytest.raises(openai.BadRequestError) as e:
        client.audio.translations.create(model=MODEL, file=("a.wav", speech))
    assert "English-only" in str(e.value) and e.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as e:
        _transcribe(client, speech, language="fr")
    assert e.value.body["param"] == "language"
    for bad in (b"", b"not audio at all" * 10):
        r = _post(url, bad, model=MODEL)
        assert r.status_code == 400 and r.json()["error"]["param"] == "file", r.text
    r = _post(url, None, model=MODEL)
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    r = _post(url, speech, model=MODEL, response_format="xml")
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"
    r = _post(url, speech, model=MODEL, timestamp_granularities="word",
              response_format="verbose_json")  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["param"] == "timestamp_granularities"
    for fields, param in (
        ({"logprob_threshold": "-1"}, "logprob_threshold"),  # without a temperature list
        ({"temperature": "0,0.2", "stream": "true"}, "temperature"),
        ({"temperature": "0,-0.2"}, "temperature"),
    ):
        r = _post(url, speech, model=MODEL, **fields)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    r = _post(url, speech, model=MODEL, chunking_strategy="auto")
    assert r.status_code == 400 and r.json()["error"]["param"] == "chunking_strategy"
    # The text and pooling routes name the model's task.
    for route, body in (
        ("/v1/completions", {"prompt": "hi"}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/embeddings", {"input": "hi"}),
        ("/pooling", {"input": "hi"}),
    ):
        r = httpx.post(url + route, json={"model": MODEL, **body}, timeout=30)
        assert r.status_code == 400 and "speech-to-text" in r.json()["error"]["message"], r.text
        assert r.json()["error"]["param"] == "model" and route in r.json()["error"]["message"]
    metrics = httpx.get(url + "/metrics", timeout=10).text
    count = re.search(r'fastlm:audio_requests_total\{model_name="[^"]+"\} (\S+)', metrics)
    seconds = re.search(r'fastlm:audio_seconds_total\{model_name="[^"]+"\} (\S+)', metrics)
    assert count and float(count.group(1)) >= 1 and seconds and float(seconds.group(1)) > 1


def test_upload_limit() -> None:
    """--max-audio-file-size (here 50K, through the CLI's parser) bounds the upload: 413."""
    from fastlm.server.cli import parse_args, server_config

    args = parse_args([str(tiny_en_dir()), "--served-model-name", MODEL,
                       "--max-audio-file-size", "50K"])  # fmt: skip
    config = server_config(args)
    assert config.max_audio_file_size == 50 * 1024
    srv = start_server(_runtime(tiny_en_dir()), served_model_names=[MODEL],
                       max_audio_file_size=config.max_audio_file_size)  # fmt: skip
    try:
        r = _post(srv.url, wav_bytes(np.zeros(16000 * 2, np.float32)), model=MODEL)
        assert r.status_code == 413 and r.json()["error"]["param"] == "file", r.text
        r = _post(srv.url, wav_bytes(np.zeros(16000, np.float32) + 0.01), model=MODEL)
        assert r.status_code == 200, r.text
    finally:
        srv.stop()


def test_text_model_refuses_audio(server: Any) -> None:
    r = _post(server.url, wav_bytes(speak("hello")), model="tiny-llama")
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert "/v1/audio/transcriptions needs a speech" in err["message"] and err["param"] == "model"
    assert json.loads(r.text)["error"]["type"] == "BadRequestError"


# -- a multilingual checkpoint: languages, detection, translation --------------------------------
ML_MODEL = "whisper-multilingual-tiny"


@pytest.fixture(scope="module")
def ml_folder() -> str:
    """A tiny random WhisperForConditionalGeneration in large-v3's layout (128 mel bins,
    51866 tokens, 100 languages, generation_config.json as Hugging Face writes it)."""
    return tiny_whisper(str(tiny_en_dir()), "float32", num_mel_bins=128, multilingual=True)


@pytest.fixture(scope="module")
def ml_client(ml_folder: str) -> Iterator[openai.OpenAI]:
    srv = start_server(_runtime(Path(ml_folder)), served_model_names=[ML_MODEL])
    yield openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
    srv.stop()


# Noise clips (a random model reads no speech); seed 0's detected language is not English, so
# a server that fell back to English instead of detecting would fail.
def _noise(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(16000 * 3) * 0.1).astype(np.float32)


def _hf_generate(
    folder: str, samples: np.ndarray, language: str | None, task: str, prompt: list[int]
) -> list[int]:
    """transformers' WhisperForConditionalGeneration.generate, greedy, 8 new tokens (its
    decoder prompt: [<|startofprev|> prompt] <|sot|> <|lang|> <|task|> <|notimestamps|>, the
    language detected when None), with the suppress rules of generation_config.json."""
    import torch

    ref = _hf_model(folder)
    feats = torch.from_numpy(audio.log_mel(samples[None], 128))
    prompt_ids = (
        torch.tensor([ref.generation_config.prev_sot_token_id, *prompt]) if prompt else None
    )
    with torch.no_grad():
        out = ref.generate(
            feats, language=language, task=task, max_new_tokens=8, do_sample=False,
            prompt_ids=prompt_ids,
        )  # fmt: skip
    return [int(t) for t in out[0]]


_HF: dict[str, Any] = {}


def _hf_model(folder: str) -> Any:
    import transformers

    if folder not in _HF:
        _HF[folder] = transformers.WhisperForConditionalGeneration.from_pretrained(folder).eval()
    return _HF[folder]


def test_multilingual_matches_transformers_generate(
    ml_client: openai.OpenAI, ml_folder: str
) -> None:
    """Transcriptions and translations, with a language and detecting it, give the text of
    transformers' generate with the same decoder prompt (<|sot|> <|lang|> <|task|>
    <|notimestamps|>) and suppress rules; the detected language is transformers' too."""
    import torch
    from fastlm.whisper import LANGUAGES
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(ml_folder) / "tokenizer.json"))
    clip = _noise(0)
    data = wav_bytes(clip)
    feats = torch.from_numpy(audio.log_mel(clip[None], 128))
    detected = tok.id_to_token(int(_hf_model(ml_folder).detect_language(feats)[0]))
    assert detected != "<|en|>"  # a server that fell back to English would fail
    texts = {}
    # (The prompt rides on the detecting case: one transformers generate fewer.)
    cases = (("transcribe", "de", ""), ("translate", None, "Hello world"), ("translate", "de", ""))
    for task, language, prompt in cases:
        # The prompt is the previous text: " " + prompt, after <|startofprev|>.
        prompt_ids = tok.encode(" " + prompt, add_special_tokens=False).ids if prompt else []
        want = _hf_generate(ml_folder, clip, language, task, prompt_ids)
        extra: dict[str, Any] = {"max_completion_tokens": 8}
        if task == "transcribe":
            got = ml_client.audio.transcriptions.create(
                model=ML_MODEL, file=("a.wav", data), language=language, extra_body=extra,
                prompt=prompt,
            )  # fmt: skip
        else:
            if language:
                extra["language"] = language
            got = ml_client.audio.translations.create(
                model=ML_MODEL, file=("a.wav", data), extra_body=extra, prompt=prompt
            )
        expected = tok.decode(want, skip_special_tokens=True).strip()
        assert got.text == expected, (task, language, prompt, got.text, expected, want)
        texts[task, language, prompt] = got.text
    # Detection on a transcription: transformers' language, reported by verbose_json.
    verbose = ml_client.audio.transcriptions.create(
        model=ML_MODEL, file=("a.wav", data), response_format="verbose_json",
        extra_body={"max_completion_tokens": 8},
    )  # fmt: skip
    assert verbose.language == LANGUAGES[detected[2:-2]]
    # The task and language tokens steer the decoder: three different texts; so does the prompt.
    assert len(set(texts.values())) == 3, texts
    unprompted = ml_client.audio.translations.create(
        model=ML_MODEL, file=("a.wav", data), extra_body={"max_completion_tokens": 8}
    )
    assert unprompted.text != texts["translate", None, "Hello world"]
    # A language by name or in capitals is the same language.
    for name in ("German", "DE"):
        got = ml_client.audio.transcriptions.create(
            model=ML_MODEL, file=("a.wav", data), language=name,
            extra_body={"max_completion_tokens": 8},
        )  # fmt: skip
        assert got.text == texts["transcribe", "de", ""]


def test_multilingual_errors_and_streamed_translation(ml_client: openai.OpenAI) -> None:
    """An unknown language is a 400 naming `language` on both routes; a streamed translation
    sends vLLM's `translation.chunk` deltas adding up to the non-streamed text."""
    data = wav_bytes(_noise(1))
    for bad in ("xx", "klingon"):
        with pytest.raises(openai.BadRequestError) as e:
            ml_client.audio.transcriptions.create(
                model=ML_MODEL, file=("a.wav", data), language=bad
            )
        assert e.value.body["param"] == "language" and bad in str(e.value)
        with pytest.raises(openai.BadRequestError) as e:
            ml_client.audio.translations.create(
                model=ML_MODEL, file=("a.wav", data), extra_body={"language": bad}
            )
        assert e.value.body["param"] == "language"
    text = ml_client.audio.translations.create(
        model=ML_MODEL, file=("a.wav", data), extra_body={"max_completion_tokens": 12}
    ).text
    r = httpx.post(
        str(ml_client.base_url) + "audio/translations",
        data={"model": ML_MODEL, "stream": "true", "stream_include_usage": "true",
              "max_completion_tokens": "12"},
        files={"file": ("a.wav", data)},
        timeout=60,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    assert r.text.rstrip().endswith("data: [DONE]")
    pieces, chunks, finish, usage = _sse(events)
    assert {c["object"] for c in chunks} == {"translation.chunk"}
    assert chunks[0]["id"].startswith("trsl-")
    assert "".join(pieces) == text and finish in ("stop", "length") and usage is not None


def test_sampling_extras_are_honoured(ml_client: openai.OpenAI) -> None:
    """vLLM's sampling extras reach the sampler: a seed repeats a sampled text and another seed
    changes it; top_k 1, a tiny top_p and min_p 1 leave only the greedy token; each penalty
    changes the greedy text; a bad value is a 400 naming it."""
    data = wav_bytes(_noise(2))

    def text(**extra: Any) -> str:
        out = ml_client.audio.transcriptions.create(
            model=ML_MODEL, file=("a.wav", data), language="en",
            extra_body={"max_completion_tokens": 16, **extra},
        )  # fmt: skip
        return out.text

    greedy = text(temperature=0.0)
    sampled = text(temperature=1.0, seed=1)
    assert sampled != greedy and text(temperature=1.0, seed=1) == sampled
    assert text(temperature=1.0, seed=2) != sampled
    for narrow in ({"top_k": 1}, {"top_p": 1e-6}, {"min_p": 1.0}):
        assert text(temperature=1.0, seed=1, **narrow) == greedy, narrow
    for penalty in ({"repetition_penalty": 3.0}, {"frequency_penalty": 2.0},
                    {"presence_penalty": 2.0}):  # fmt: skip
        assert text(temperature=0.0, **penalty) != greedy, penalty
    for bad, param in (
        ({"top_p": 2.0}, "top_p"),
        ({"min_p": -1}, "min_p"),
        ({"top_k": -5}, "top_k"),
    ):
        with pytest.raises(openai.BadRequestError) as e:
            text(**bad)
        assert e.value.body["param"] == param, e.value.body
