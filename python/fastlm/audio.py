"""Audio for Whisper: decode uploads to 16 kHz mono, split long audio, log-mel features.

Features follow transformers' `WhisperFeatureExtractor` (and OpenAI's `log_mel_spectrogram`):
each window is zero-padded to 30 s, framed with a periodic Hann window (n_fft 400, hop 160,
reflect-padded centre frames), power spectrum, a Slaney-scale, Slaney-normalised mel filterbank,
log10 with a 1e-10 floor, clamped to 8 below the window's maximum and scaled (x + 4) / 4. The
whole computation is vectorised numpy over frames (one rfft call per window).
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 16_000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_SECONDS = 30
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480000 samples per window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames per window

FloatArray = npt.NDArray[np.float32]


class AudioError(ValueError):
    """The upload is not audio we can read (the server answers 400)."""


def _hz_to_mel(freq: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    # Slaney: linear below 1 kHz (3 mels per 200 Hz), logarithmic above.
    min_log_hz = 1000.0
    min_log_mel = 15.0
    logstep = 27.0 / np.log(6.4)
    mels = 3.0 * freq / 200.0
    log_region = freq >= min_log_hz
    mels[log_region] = min_log_mel + np.log(freq[log_region] / min_log_hz) * logstep
    return mels


def _mel_to_hz(mels: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    min_log_hz = 1000.0
    min_log_mel = 15.0
    logstep = np.log(6.4) / 27.0
    freq = 200.0 * mels / 3.0
    log_region = mels >= min_log_mel
    freq[log_region] = min_log_hz * np.exp(logstep * (mels[log_region] - min_log_mel))
    return freq


@functools.cache
def mel_filters(n_mels: int) -> FloatArray:
    """[n_fft // 2 + 1, n_mels] triangular filters on the Slaney mel scale, Slaney-normalised."""
    fft_freqs = np.linspace(0, SAMPLE_RATE // 2, N_FFT // 2 + 1)
    mel_edges = np.linspace(
        _hz_to_mel(np.array([0.0]))[0], _hz_to_mel(np.array([8000.0]))[0], n_mels + 2
    )
    edges = _mel_to_hz(mel_edges)
    widths = np.diff(edges)
    slopes = edges[None, :] - fft_freqs[:, None]
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    filters *= (2.0 / (edges[2 : n_mels + 2] - edges[:n_mels]))[None, :]
    return filters.astype(np.float32)


@functools.cache
def _hann() -> FloatArray:
    n = np.arange(N_FFT)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / N_FFT)).astype(np.float32)


def log_mel(windows: FloatArray, n_mels: int) -> FloatArray:
    """Log-mel features [n, n_mels, 3000] of `windows` [n, <= 480000] (each zero-padded to 30 s)."""
    windows = np.atleast_2d(np.asarray(windows, dtype=np.float32))
    if windows.shape[1] > N_SAMPLES:
        raise ValueError(f"a window holds at most {N_SAMPLES} samples, got {windows.shape[1]}")
    padded = np.zeros((windows.shape[0], N_SAMPLES), dtype=np.float32)
    padded[:, : windows.shape[1]] = windows
    half = N_FFT // 2
    centred = np.pad(padded, ((0, 0), (half, half)), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(centred, N_FFT, axis=1)[:, ::HOP_LENGTH]
    frames = frames[:, :N_FRAMES]  # the last (3001st) frame is dropped, as Whisper does
    spectrum = np.fft.rfft(frames * _hann(), axis=-1)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    mel = power @ mel_filters(n_mels)  # [n, 3000, n_mels]
    log_spec = np.log10(np.maximum(mel, 1e-10))
    peak = log_spec.max(axis=(1, 2), keepdims=True)
    log_spec = np.maximum(log_spec, peak - 8.0)
    out: FloatArray = ((log_spec + 4.0) / 4.0).transpose(0, 2, 1).astype(np.float32)
    return np.ascontiguousarray(out)


def decode_audio(data: bytes) -> FloatArray:
    """16 kHz mono float32 samples of an uploaded file: wav, flac, ogg and mp3 via libsndfile;
    m4a, webm, mp4 (and whatever else FFmpeg reads) via PyAV when it is installed."""
    import soundfile as sf

    if not data:
        raise AudioError("the audio file is empty")
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        return _decode_with_pyav(data, str(e))
    if samples.shape[0] == 0:
        raise AudioError("the audio file holds no samples")
    mono = samples.mean(axis=1).astype(np.float32)
    if rate != SAMPLE_RATE:
        import soxr

        mono = soxr.resample(mono, rate, SAMPLE_RATE).astype(np.float32)
    return np.ascontiguousarray(mono)


def _decode_with_pyav(data: bytes, soundfile_error: str) -> FloatArray:
    """The first audio stream of a container libsndfile cannot read, through FFmpeg (PyAV),
    mixed down and resampled to 16 kHz mono float32 by FFmpeg's resampler."""
    try:
        import av
    except ImportError:
        raise AudioError(
            f"could not decode the audio file ({soundfile_error}); fastlm reads wav, flac, ogg "
            "and mp3, and m4a/webm/mp4 when PyAV is installed (pip install av; not installed "
            "here)"
        ) from None
    pieces: list[FloatArray] = []
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            streams = [s for s in container.streams if s.type == "audio"]
            if not streams:
                raise AudioError("the file holds no audio stream")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            frames = [f for f in container.decode(streams[0]) if isinstance(f, av.AudioFrame)]
            for out in [o for f in [*frames, None] for o in resampler.resample(f)]:
                pieces.append(np.asarray(out.to_ndarray(), dtype=np.float32).reshape(-1))
    except AudioError:
        raise
    except Exception as e:  # av.FFmpegError and its kin: not a container FFmpeg can read
        raise AudioError(
            f"could not decode the audio file (libsndfile: {soundfile_error}; FFmpeg: {e})"
        ) from None
    if not pieces or sum(p.shape[0] for p in pieces) == 0:
        raise AudioError("the audio file holds no samples")
    return np.ascontiguousarray(np.concatenate(pieces).astype(np.float32))


@dataclass(frozen=True)
class AudioChunk:
    samples: FloatArray
    offset_seconds: float


def split_audio(samples: FloatArray, max_seconds: float = CHUNK_SECONDS) -> list[AudioChunk]:
    """Windows of at most `max_seconds`, cut at the quietest 100 ms in the last 5 s of each.

    As vLLM does: a cut in a pause keeps words whole, so stitched transcripts read as one.
    """
    max_len = int(max_seconds * SAMPLE_RATE)
    if samples.shape[0] <= max_len:
        return [AudioChunk(samples, 0.0)]
    search = 5 * SAMPLE_RATE
    step = SAMPLE_RATE // 10
    chunks: list[AudioChunk] = []
    start = 0
    n = samples.shape[0]
    while n - start > max_len:
        lo = start + max_len - search
        region = samples[lo : start + max_len]
        usable = region.shape[0] // step * step
        energy = (region[:usable].reshape(-1, step) ** 2).mean(axis=1)
        cut = lo + int(np.argmin(energy)) * step + step // 2
        chunks.append(AudioChunk(samples[start:cut], start / SAMPLE_RATE))
        start = cut
    chunks.append(AudioChunk(samples[start:], start / SAMPLE_RATE))
    return chunks


def log_mel_chunks(chunks: list[AudioChunk], n_mels: int) -> FloatArray:
    """Features [len(chunks), n_mels, 3000] of each window, a few windows per numpy call."""
    out = np.empty((len(chunks), n_mels, N_FRAMES), dtype=np.float32)
    for i, c in enumerate(chunks):
        out[i] = log_mel(c.samples[None], n_mels)[0]
    return out
