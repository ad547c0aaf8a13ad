"""Speech-to-text throughput: fastlm vs faster-whisper (CTranslate2) vs transformers on tiny.en.

The same clips (espeak-ng speech, several sentences each, 10-30 s, so no chunking differences)
go through
- fastlm's engine in-process (features in numpy, encoder + decoder in the C++ runtime), one
  request at a time (concurrency 1) and 8 in flight (concurrency 8), float32 and bfloat16;
- faster-whisper (`--faster-whisper-python`: a Python with faster-whisper installed, run as a
  subprocess) with the same model directory, compute types float32 and int8, beam_size=1,
  condition_on_previous_text=False, without_timestamps=True, no VAD, 2 threads in all
  (concurrency 1: one worker of 2 threads; concurrency 8: 8 Python threads over 2 workers of 1
  thread, CTranslate2's way of serving concurrent calls);
- transformers (the CTranslate2 weights converted to a transformers folder by the tests' own
  converter), greedy, one clip at a time, on the first `--transformers-clips` clips.
Long audio (all clips concatenated: 20 clips are ~6 minutes) is timed separately: fastlm splits
it at quiet points and decodes the windows concurrently; faster-whisper runs its own long-form
loop (seeking by the timestamps it predicts, its default: without them it would cut words at
fixed 30 s marks). Reports the real-time factor (audio seconds / wall seconds) and requests/s,
the word error rate between fastlm's and each peer's transcripts, and each one's WER against
the script espeak-ng read. On a shared machine numbers are indicative.

    PYTHONPATH=python:build-dev/pypath:tests/python python bench/bench_audio.py \
        --faster-whisper-python /path/to/venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

# As the server CLI does (python/fastlm/server/cli.py): read when libgomp loads.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore.",
    "Open the pod bay doors, please.",
    "A journey of a thousand miles begins with a single step.",
    "The weather today is sunny with a chance of rain in the evening.",
    "Please remember to bring your passport and your boarding pass.",
    "Machine learning models can transcribe speech into text very quickly.",
    "The meeting has been moved to Thursday afternoon at three o'clock.",
    "He drank a cup of hot coffee before leaving for work.",
    "Our team finished the project two weeks ahead of schedule.",
    "The library closes at nine in the evening on weekdays.",
    "Turn left at the next intersection and then drive straight ahead.",
    "Fresh vegetables are available at the market every Saturday morning.",
    "The children played football in the park until it got dark.",
    "Reading books is a wonderful way to learn about the world.",
    "Please send me the report by the end of the day.",
    "The train to London departs from platform number four.",
    "She plays the piano beautifully and practices every day.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "Thank you very much for your help with this difficult problem.",
]


def wer(ref: str, hyp: str) -> float:
    norm = lambda s: "".join(c for c in s.lower() if c.isalnum() or c.isspace()).split()  # noqa: E731
    r, h = norm(ref), norm(hyp)
    d = np.arange(len(h) + 1)
    for i, rw in enumerate(r, 1):
        prev, d[0] = d[0], i
        for j, hw in enumerate(h, 1):
            cur = min(d[j] + 1, d[j - 1] + 1, prev + (rw != hw))
            prev, d[j] = d[j], cur
    return float(d[len(h)]) / max(1, len(r))


def corpus_wer(refs: list[str], hyps: list[str]) -> float:
    words = sum(len(r.split()) for r in refs)
    return sum(wer(r, h) * len(r.split()) for r, h in zip(refs, hyps, strict=True)) / max(1, words)


class Fastlm:
    def __init__(self, model: str, dtype: str = "float32") -> None:
        from fastlm import _core
        from fastlm.runtime import EngineArgs, Runtime
        from fastlm.whisper import whisper_tokens

        self.runtime = Runtime(EngineArgs(model=model, dtype=dtype))
        self.engine = self.runtime.engine
        self.tokens = whisper_tokens(
            self.runtime.files, self.runtime.tokenizer, int(self.engine.vocab_size)
        )
        self.prompt = self.tokens.decoder_prompt("en", "transcribe")
        self.params = _core.SamplingParams()
        self.params.temperature = 0.0
        self.params.max_tokens = 440
        self.params.bad_words = [[t] for t in self.tokens.suppress_tokens]
        self.params.begin_suppress_tokens = list(self.tokens.begin_suppress_tokens)

    def run(self, clips: list[np.ndarray], concurrency: int) -> list[str]:
        from fastlm import audio

        out: dict[str, list[int]] = {}
        pending = list(enumerate(clips))
        live = 0
        while pending or live:
            while pending and live < concurrency:
                i, clip = pending.pop(0)
                feats = audio.log_mel(clip[None], 80)[0]
                self.engine.add_encoder_decoder_request(f"r{i}", feats, self.prompt, self.params)
                out[f"r{i}"] = []
                live += 1
            for d in self.engine.step():
                out[d.request_id] += list(d.new_token_ids)
                live -= int(d.finished)
        tok = self.runtime.tokenizer
        return [
            tok.decode(out[f"r{i}"], skip_special_tokens=True).strip() for i in range(len(clips))
        ]

    def run_long(self, samples: np.ndarray) -> str:
        from fastlm import audio

        chunks = audio.split_audio(samples)
        feats = audio.log_mel_chunks(chunks, 80)
        out: dict[str, list[int]] = {}
        for i in range(len(chunks)):
            self.engine.add_encoder_decoder_request(f"w{i}", feats[i], self.prompt, self.params)
            out[f"w{i}"] = []
        while self.engine.has_unfinished():
            for d in self.engine.step():
                out[d.request_id] += list(d.new_token_ids)
        tok = self.runtime.tokenizer
        return " ".join(
            tok.decode(out[f"w{i}"], skip_special_tokens=True).strip() for i in range(len(chunks))
        )


FW_SCRIPT = r"""
import json, sys, time
import numpy as np
from concurrent.futures import ThreadPoolExecutor
from faster_whisper import WhisperModel
model_dir, clips_path, compute = sys.argv[1], sys.argv[2], sys.argv[3]
concurrency, threads = int(sys.argv[4]), int(sys.argv[5])
timestamps = sys.argv[6] == "1"
clips = list(np.load(clips_path).values())
workers = min(concurrency, threads)
model = WhisperModel(model_dir, device="cpu", compute_type=compute,
                     cpu_threads=threads // workers, num_workers=workers)
def one(c):
    segs, _ = model.transcribe(c, beam_size=1, language="en", condition_on_previous_text=False,
                               without_timestamps=not timestamps, vad_filter=False,
                               temperature=0.0)
    return "".join(s.text for s in segs).strip()
one(clips[0][: 16000 * 5])  # warm-up
t = time.perf_counter()
with ThreadPoolExecutor(concurrency) as pool:
    texts = list(pool.map(one, clips))
print(json.dumps({"seconds": time.perf_counter() - t, "texts": texts}))
"""


def run_faster_whisper(
    python: str,
    model: str,
    clips: list[np.ndarray],
    compute: str,
    conc: int,
    threads: int,
    timestamps: bool = False,
) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clips.npz"
        np.savez(path, *clips)
        args = [model, str(path), compute, str(conc), str(threads), str(int(timestamps))]
        res = subprocess.run(
            [python, "-c", FW_SCRIPT, *args],
            capture_output=True,
            text=True,
            check=True,
        )
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_transformers(hf_dir: Path, clips: list[np.ndarray]) -> tuple[float, list[str]]:
    import transformers
    from fastlm import audio
    from tokenizers import Tokenizer
    from whisper_data import hf_greedy

    model = transformers.WhisperForConditionalGeneration.from_pretrained(hf_dir).eval()
    tok = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    suppress = json.loads((hf_dir / "ct2_config.json").read_text())
    rules = (suppress["suppress_ids"], suppress["suppress_ids_begin"])
    prompt = [50257, 50362]
    texts = []
    t = time.perf_counter()
    for clip in clips:
        feats = audio.log_mel(clip[None], 80)[0]
        texts.append(tok.decode(hf_greedy(model, feats, prompt, 440, rules, True)).strip())
    return time.perf_counter() - t, texts


def make_clips(n: int) -> tuple[list[np.ndarray], list[str]]:
    """n clips of 3-6 sentences each (10-30 s of espeak-ng speech) and their scripts."""
    from whisper_data import speak

    clips, scripts = [], []
    for i in range(n):
        k = 3 + i % 4
        while True:  # whole sentences only, within one 30 s window
            text = " ".join(SENTENCES[(i + j * 7) % len(SENTENCES)] for j in range(k))
            clip = speak(text, speed=150 + 10 * (i % 3))
            if len(clip) <= 30 * 16000:
                break
            k -= 1
        clips.append(clip)
        scripts.append(text)
    return clips, scripts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--model", default=None, help="CTranslate2 tiny.en folder (default: the tests')"
    )
    ap.add_argument("--faster-whisper-python", default=None)
    ap.add_argument("--clips", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2, help="faster-whisper's threads in all")
    ap.add_argument("--transformers-clips", type=int, default=5)
    ap.add_argument("--no-long", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
    from whisper_data import tiny_en_dir

    model = args.model or str(tiny_en_dir())
    clips, scripts = make_clips(args.clips)
    audio_s = sum(len(c) for c in clips) / 16000
    print(
        f"{len(clips)} clips, {audio_s:.1f} s of audio ({min(len(c) for c in clips) / 16000:.1f}"
        f"-{max(len(c) for c in clips) / 16000:.1f} s), {os.cpu_count()} CPUs (shared machine)"
    )
    results: dict[str, dict[str, Any]] = {}
    engines = {"float32": Fastlm(model, "float32"), "bfloat16": Fastlm(model, "bfloat16")}
    for dtype, fl in engines.items():
        fl.run(clips[:1], 1)  # warm-up
        for conc in (1, 8):
            t = time.perf_counter()
            texts = fl.run(clips, conc)
            results[f"fastlm {dtype} c={conc}"] = {
                "seconds": time.perf_counter() - t,
                "texts": texts,
                "n": len(clips),
                "audio": audio_s,
            }
            print(
                f"  fastlm {dtype} c={conc}: {results[f'fastlm {dtype} c={conc}']['seconds']:.1f} s"
            )
    if args.faster_whisper_python:
        for compute in ("float32", "int8"):
            for conc in (1, 8):
                r = run_faster_whisper(
                    args.faster_whisper_python, model, clips, compute, conc, args.threads
                )
                r.update(n=len(clips), audio=audio_s)
                results[f"faster-whisper {compute} c={conc}"] = r
                print(f"  faster-whisper {compute} c={conc}: {r['seconds']:.1f} s")
    if args.transformers_clips:
        from test_whisper import ct2_to_transformers

        sub = clips[: args.transformers_clips]
        with tempfile.TemporaryDirectory() as tmp:
            hf = ct2_to_transformers(Path(model), Path(tmp) / "hf")
            (hf / "tokenizer.json").write_bytes((Path(model) / "tokenizer.json").read_bytes())
            (hf / "ct2_config.json").write_bytes((Path(model) / "config.json").read_bytes())
            dt, texts = run_transformers(hf, sub)
            results["transformers float32 c=1"] = {
                "seconds": dt,
                "texts": texts,
                "n": len(sub),
                "audio": sum(len(c) for c in sub) / 16000,
            }
    base = results["fastlm float32 c=1"]["texts"]
    print(
        f"{'system':<30} {'clips':>5} {'wall s':>8} {'RTF x':>7} {'req/s':>6} "
        f"{'WER vs fastlm':>13} {'WER vs script':>13}"
    )
    for key, r in results.items():
        w = corpus_wer(base[: r["n"]], r["texts"])
        truth = corpus_wer(scripts[: r["n"]], r["texts"])
        print(
            f"{key:<30} {r['n']:5d} {r['seconds']:8.2f} {r['audio'] / r['seconds']:7.1f} "
            f"{r['n'] / r['seconds']:6.2f} {w:13.3f} {truth:13.3f}"
        )
    if not args.no_long:
        long = np.concatenate(clips)
        script = " ".join(scripts)
        secs = len(long) / 16000
        t = time.perf_counter()
        ours = engines["float32"].run_long(long)
        dt = time.perf_counter() - t
        print(
            f"long audio {secs:.0f} s ({secs / 60:.1f} min): fastlm float32 {dt:.1f} s "
            f"({secs / dt:.1f}x real time), WER vs script {wer(script, ours):.3f}"
        )
        if args.faster_whisper_python:
            r = run_faster_whisper(
                args.faster_whisper_python, model, [long], "float32", 1, args.threads, True
            )
            theirs = r["texts"][0]
            print(
                f"long audio {secs:.0f} s: faster-whisper float32 {r['seconds']:.1f} s "
                f"({secs / r['seconds']:.1f}x real time), WER vs script "
                f"{wer(script, theirs):.3f}, WER vs fastlm {wer(ours, theirs):.3f}"
            )


if __name__ == "__main__":
    main()
