"""/v1/audio/transcriptions and /v1/audio/translations on a real server over the real tiny.en
(CTranslate2) model, through OpenAI's official client."""

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
from fixtures_server import start_server
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


def test_streaming_equals_non_streaming(client: openai.OpenAI, speech: bytes) -> None:
    text = _transcribe(client, speech).text
    stream = _transcribe(client, speech, stream=True, extra_body={"stream_include_usage": True})
    pieces, usage, finish = [], None, None
    for chunk in stream:
        data = chunk.model_dump()
        assert data["object"] == "transcription.chunk"
        if data["choices"]:
            pieces.append(data["choices"][0]["delta"]["content"])
            finish = data["choices"][0]["finish_reason"] or finish
        if data.get("usage"):
            usage = data["usage"]
    assert "".join(pieces) == text and finish == "stop"
    assert len(pieces) > 2  # deltas, not one blob
    assert usage is not None and usage["completion_tokens"] > 5


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
    r = httpx.post(url + "/v1/completions", json={"model": MODEL, "prompt": "hi"}, timeout=30)
    assert r.status_code == 400 and "speech-to-text" in r.json()["error"]["message"], r.text
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(url + "/v1/chat/completions", json=chat, timeout=30)
    assert r.status_code == 400 and "speech-to-text" in r.json()["error"]["message"], r.text
    assert r.json()["error"]["param"] == "model"
    metrics = httpx.get(url + "/metrics", timeout=10).text
    count = re.search(r'fastlm:audio_requests_total\{model_name="[^"]+"\} (\S+)', metrics)
    seconds = re.search(r'fastlm:audio_seconds_total\{model_name="[^"]+"\} (\S+)', metrics)
    assert count and float(count.group(1)) >= 1 and seconds and float(seconds.group(1)) > 1


def test_upload_limit() -> None:
    srv = start_server(_runtime(tiny_en_dir()), served_model_names=[MODEL],
                       max_audio_file_size=50_000)  # fmt: skip
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
