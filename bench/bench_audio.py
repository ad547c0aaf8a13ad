"""Speech-to-text throughput: fastlm vs faster-whisper (CTranslate2) vs transformers on tiny.en.

The same clips (espeak-ng speech of different sentences, <= 30 s each, so no chunking
differences) go through
- fastlm's engine in-process (features in numpy, encoder + decoder in the C++ runtime), one
  request at a time (concurrency 1) and 8 in flight (concurrency 8);
- faster-whisper (`--faster-whisper-python`: a Python with faster-whisper installed, run as a
  subprocess) with the same model directory, compute type float32, beam_size=1,
  condition_on_previous_text=False, without_timestamps=True, no VAD; concurrency 8 runs 8 threads
  over one model (CTranslate2 batches concurrent calls, as faster-whisper's docs suggest);
- transformers (the CTranslate2 weights converted to a transformers folder by the tests' own
  converter), greedy, one clip at a time.
Reports the real-time factor (audio seconds / wall seconds) and requests/s, and the word error
rate between fastlm's and each peer's transcripts. On a shared machine numbers are indicative;
the runs are interleaved (fastlm, peer, fastlm, ...) and the best of `--repeat` is kept.

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
    def __init__(self, model: str) -> None:
        from fastlm import _core
        from fastlm.runtime import EngineArgs, Runtime
        from fastlm.whisper import whisper_tokens

        self.runtime = Runtime(EngineArgs(model=model, dtype="float32"))
        self.engine = self.runtime.engine
        self.tokens = whisper_tokens(
            self.runtime.files, self.runtime.tokenizer, int(self.engine.vocab_size)
        )
        self.prompt = self.tokens.decoder_prompt("en", "transcribe")
        self.params = _core.SamplingParams()
        self.params.temperature = 0.0
        self.params.max_tokens = 200
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


FW_SCRIPT = r"""
import json, sys, time
import numpy as np
from concurrent.futures import ThreadPoolExecutor
from faster_whisper import WhisperModel
model_dir, clips_path = sys.argv[1], sys.argv[2]
concurrency, threads = int(sys.argv[3]), int(sys.argv[4])
clips = list(np.load(clips_path).values())
model = WhisperModel(model_dir, device="cpu", compute_type="float32", cpu_threads=threads,
                     num_workers=concurrency)
def one(c):
    segs, _ = model.transcribe(c, beam_size=1, language="en", condition_on_previous_text=False,
                               without_timestamps=True, vad_filter=False, temperature=0.0)
    return "".join(s.text for s in segs).strip()
one(clips[0])  # warm-up
t = time.perf_counter()
with ThreadPoolExecutor(concurrency) as pool:
    texts = list(pool.map(one, clips))
print(json.dumps({"seconds": time.perf_counter() - t, "texts": texts}))
"""


def run_faster_whisper(python: str, model: str, clips: list[np.ndarray], conc: int) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clips.npz"
        np.savez(path, *clips)
        res = subprocess.run(
            [python, "-c", FW_SCRIPT, model, str(path), str(conc), str(os.cpu_count() or 2)],
            capture_output=True,
            text=True,
            check=True,
        )
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_transformers(hf_dir: Path, clips: list[np.ndarray]) -> tuple[float, list[str]]:
    import torch
    import transformers
    from fastlm import audio
    from tokenizers import Tokenizer

    model = transformers.WhisperForConditionalGeneration.from_pretrained(hf_dir).eval()
    tok = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    suppress = json.loads((hf_dir / "ct2_config.json").read_text())
    texts = []
    t = time.perf_counter()
    with torch.no_grad():
        for clip in clips:
            feats = torch.from_numpy(audio.log_mel(clip[None], 80))
            enc = model.model.encoder(feats).last_hidden_state
            ids, past, out = [50257, 50362], None, []
            for step in range(200):
                r = model(
                    encoder_outputs=(enc,),
                    decoder_input_ids=torch.tensor([ids if past is None else ids[-1:]]),
                    past_key_values=past,
                    use_cache=True,
                )
                past = r.past_key_values
                row = r.logits[0, -1].clone()
                row[suppress["suppress_ids"]] = float("-inf")
                if step == 0:
                    row[suppress["suppress_ids_begin"]] = float("-inf")
                nxt = int(row.argmax())
                if nxt == 50256:
                    break
                ids.append(nxt)
                out.append(nxt)
            texts.append(tok.decode(out).strip())
    return time.perf_counter() - t, texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--model", default=None, help="CTranslate2 tiny.en folder (default: the tests')"
    )
    ap.add_argument("--faster-whisper-python", default=None)
    ap.add_argument("--clips", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--no-transformers", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
    from whisper_data import speak, tiny_en_dir

    model = args.model or str(tiny_en_dir())
    clips = [
        speak(SENTENCES[i % len(SENTENCES)], speed=140 + 5 * (i % 4)) for i in range(args.clips)
    ]
    audio_s = sum(len(c) for c in clips) / 16000
    print(f"{len(clips)} clips, {audio_s:.1f} s of audio, {os.cpu_count()} CPUs (shared machine)")
    fl = Fastlm(model)
    fl.run(clips[:1], 1)  # warm-up
    results: dict[str, dict[str, Any]] = {}
    for _ in range(args.repeat):
        for conc in (1, 8):
            t = time.perf_counter()
            texts = fl.run(clips, conc)
            dt = time.perf_counter() - t
            key = f"fastlm c={conc}"
            if key not in results or dt < results[key]["seconds"]:
                results[key] = {"seconds": dt, "texts": texts}
            if args.faster_whisper_python:
                r = run_faster_whisper(args.faster_whisper_python, model, clips, conc)
                key = f"faster-whisper c={conc}"
                if key not in results or r["seconds"] < results[key]["seconds"]:
                    results[key] = r
    if not args.no_transformers:
        from test_whisper import ct2_to_transformers

        with tempfile.TemporaryDirectory() as tmp:
            hf = ct2_to_transformers(Path(model), Path(tmp) / "hf")
            (hf / "tokenizer.json").write_bytes((Path(model) / "tokenizer.json").read_bytes())
            (hf / "ct2_config.json").write_bytes((Path(model) / "config.json").read_bytes())
            dt, texts = run_transformers(hf, clips)
            results["transformers c=1"] = {"seconds": dt, "texts": texts}
    base = results["fastlm c=1"]["texts"]
    print(f"{'system':<22} {'wall s':>8} {'RTF x':>8} {'req/s':>7} {'WER vs fastlm':>14}")
    for key, r in results.items():
        rtf = audio_s / r["seconds"]
        w = corpus_wer(base, r["texts"])
        print(
            f"{key:<22} {r['seconds']:8.2f} {rtf:8.1f} {len(clips) / r['seconds']:7.2f} {w:14.3f}"
        )
    print(
        "WER of fastlm vs the sentences spoken:", f"{corpus_wer(SENTENCES[: len(clips)], base):.3f}"
    )


if __name__ == "__main__":
    main()
