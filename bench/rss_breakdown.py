"""Where a process's resident memory goes (issue 12): /proc/<pid>/smaps summed per kind.

    python bench/rss_breakdown.py --pid N        one process, now (any process: llama.cpp too)
    PYTHONPATH=python:build-dev/pypath python bench/rss_breakdown.py --imports
        the bare interpreter, then each import stage of the offline and the serving process
    PYTHONPATH=python:build-dev/pypath python bench/rss_breakdown.py --serve [--model F.gguf]
        a real `fastlm serve` on loopback: after start-up, one chat completion, 16 concurrent
        completions of 128 + 128 tokens (the batch-16 figure of bench_cpu_peers.py)

The offline `LLM` process and llama-cpp-python's, phase by phase: `bench_cpu_peers.py --smaps`.

Kinds: the model file's mapped pages; the malloc heap; anonymous memory (malloc'd blocks above
the mmap threshold: weight copies, the KV cache, activation scratch; Python's arenas, thread
stacks, glibc's per-thread arenas); and the code + data of each library that holds more than
1 MiB (the rest summed). Only stdlib here, so any interpreter (a peer's venv) can import it.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

_HEADER = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")
_LIBS = {
    "libdnnl": "oneDNN (libdnnl)",
    "_core": "fastlm _core",
    "libgomp": "OpenMP (libgomp)",
    "libpython": "Python",
    "tokenizers": "tokenizers",
    "llguidance": "llguidance",
    "xgrammar": "xgrammar",
    "numpy": "numpy",
    "torch": "torch",
    "libllama": "llama.cpp",
    "libggml": "llama.cpp",
    "llama_cpp": "llama.cpp",
    "libstdc++": "C/C++ runtime",
    "libc.so": "C/C++ runtime",
    "libm.so": "C/C++ runtime",
    "ld-linux": "C/C++ runtime",
    "libcrypto": "OpenSSL",
    "libssl": "OpenSSL",
}
_MODEL_SUFFIXES = (".gguf", ".safetensors", "model.bin")


def read_smaps(pid: int | str = "self") -> list[dict[str, Any]]:
    """One dict per mapping: size_kib, rss_kib, anon_kib, path ('' for anonymous)."""
    maps: list[dict[str, Any]] = []
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if _HEADER.match(line):
                parts = line.split(maxsplit=5)
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                path = parts[5].strip() if len(parts) > 5 else ""
                maps.append({"size_kib": (hi - lo) // 1024, "path": path, "perms": parts[1]})
            elif line.startswith("Rss:"):
                maps[-1]["rss_kib"] = int(line.split()[1])
            elif line.startswith("Anonymous:"):
                maps[-1]["anon_kib"] = int(line.split()[1])
    return maps


def kind_of(path: str) -> str:
    if path.endswith(_MODEL_SUFFIXES):
        return "model file (mapped weights)"
    if path == "[heap]":
        return "malloc heap (brk)"
    if path == "[stack]":
        return "main thread stack"
    if path.startswith("["):
        return "kernel ([vdso], [vvar])"
    for key, name in _LIBS.items():
        if key in os.path.basename(path) or (key in ("numpy", "torch") and f"/{key}" in path):
            return name
    if path.endswith("python3.11") or "/bin/python" in path:
        return "Python"
    return "other files (libraries, extension modules)"


def breakdown(pid: int | str = "self") -> dict[str, float]:
    """Resident MiB per kind, largest first, plus 'total'. The KV cache is anonymous memory
    like malloc's large blocks (the kernel merges fastlm's adjacent per-layer K/V mappings into
    one), so it shows as the growth of 'anonymous' between phases: blocks in use x bytes a
    block."""
    out: dict[str, float] = collections.defaultdict(float)
    for m in read_smaps(pid):
        k = kind_of(m["path"]) if m["path"] else "anonymous (malloc, KV cache, arenas, stacks)"
        out[k] += m.get("rss_kib", 0) / 1024
    total = sum(out.values())
    for k in [k for k, v in out.items() if v < 1.0]:
        out["other files (libraries, extension modules)"] += out.pop(k)
    result = dict(sorted(out.items(), key=lambda kv: -kv[1]))
    result["total"] = total
    return result


def status_mib(pid: int | str = "self") -> dict[str, float]:
    """VmRSS, VmHWM (peak) and RssAnon / RssFile from /proc/<pid>/status, MiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
                val = int(line.split()[1])
                out[key] = float(val) if key == "Threads" else val / 1024
    return out


def snapshot(label: str, pid: int | str = "self") -> dict[str, Any]:
    return {"phase": label, "status": status_mib(pid), "kinds": breakdown(pid)}


def print_snapshots(title: str, snaps: list[dict[str, Any]]) -> None:
    """A markdown table: one row per kind, one column per phase (resident MiB)."""
    kinds: list[str] = []
    for s in snaps:
        kinds += [k for k in s["kinds"] if k not in kinds and k != "total"]
    print(f"\n{title}")
    print("| MiB resident | " + " | ".join(s["phase"] for s in snaps) + " |")
    print("| --- |" + " ---: |" * len(snaps))
    for k in kinds:
        print(f"| {k} | " + " | ".join(f"{s['kinds'].get(k, 0.0):.1f}" for s in snaps) + " |")
    print("| **total (VmRSS)** | " + " | ".join(f"{s['kinds']['total']:.1f}" for s in snaps) + " |")
    print(
        "| peak so far (VmHWM) | " + " | ".join(f"{s['status']['VmHWM']:.1f}" for s in snaps) + " |"
    )


# -- import stages --------------------------------------------------------------------------

_STAGES = {
    "bare python": "",
    "+ fastlm._core": "import fastlm._core",
    "+ fastlm.LLM (offline)": "import fastlm._core; from fastlm.llm import LLM",
    "+ fastlm.server.app (serving)": "import fastlm._core; from fastlm.llm import LLM; "
    "import fastlm.server.app, fastlm.server.cli",
}


def import_stages() -> list[dict[str, Any]]:
    """Each stage in a fresh interpreter: its RSS after the imports, by kind."""
    snaps = []
    here = Path(__file__).resolve()
    for label, code in _STAGES.items():
        prog = (
            f"import sys; sys.path.insert(0, {str(here.parent)!r}); {code}\n"
            "import json, rss_breakdown as r, sys\n"
            f"print(json.dumps(r.snapshot({label!r})))\n"
            "print(json.dumps(sorted(m for m in sys.modules if '.' not in m)))"
        )
        proc = subprocess.run(
            [sys.executable, "-c", prog], capture_output=True, text=True, check=True
        )
        lines = proc.stdout.splitlines()
        snap = json.loads(lines[0])
        heavy = {
            "torch",
            "transformers",
            "numpy",
            "jinja2",
            "llguidance",
            "tokenizers",
            "av",
            "soundfile",
            "soxr",
            "xgrammar",
            "litestar",
            "msgspec",
            "huggingface_hub",
        }
        snap["heavy_modules"] = sorted(heavy & set(json.loads(lines[1])))
        snaps.append(snap)
    return snaps


# -- a real server ----------------------------------------------------------------------------


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=600) as r:
        return dict(json.loads(r.read()))


def serve(args: argparse.Namespace) -> list[dict[str, Any]]:
    port = args.port
    cmd = [sys.executable, "-m", "fastlm", "serve"]
    cmd += [args.model] if args.model else []
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--max-model-len", "1025"]
    cmd += ["--no-enable-prefix-caching"]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    log = open(args.server_log, "w") if args.server_log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    snaps = []
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(base + "/health", timeout=2):
                    break
            except OSError as e:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited ({proc.returncode}): {cmd}") from e
                time.sleep(0.5)
        model = json.loads(urllib.request.urlopen(base + "/v1/models").read())["data"][0]["id"]
        snaps.append(snapshot("started", proc.pid))
        _post(
            base + "/v1/chat/completions",
            {"model": model, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 32},
        )
        snaps.append(snapshot("1 chat completion", proc.pid))
        prompt_ids = list(range(1000, 1128))

        def one(i: int) -> None:
            _post(
                base + "/v1/completions",
                {
                    "model": model,
                    "prompt": [t + i for t in prompt_ids],
                    "max_tokens": 128,
                    "temperature": 0.0,
                    "ignore_eos": True,
                },
            )

        threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        snaps.append(snapshot("16 x (128 + 128) concurrent", proc.pid))
        long_prompt = [1000 + (i * 7919) % 40000 for i in range(1024)]
        _post(base + "/v1/completions", {"model": model, "prompt": long_prompt, "max_tokens": 1})
        snaps.append(snapshot("+ 1,024-token prompt", proc.pid))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return snaps


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pid", type=int, default=None)
    p.add_argument("--imports", action="store_true")
    p.add_argument("--serve", action="store_true")
    p.add_argument("--model", default=None)
    p.add_argument("--port", type=int, default=18431)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--server-log", default=None)
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)
    results: dict[str, Any] = {}
    if args.pid is not None:
        results["pid"] = [snapshot(f"pid {args.pid}", args.pid)]
        print_snapshots(f"process {args.pid}", results["pid"])
    if args.imports:
        results["imports"] = import_stages()
        print_snapshots("import stages (fresh interpreter each)", results["imports"])
        for s in results["imports"]:
            print(f"- {s['phase']}: {', '.join(s['heavy_modules']) or '(none of the heavy ones)'}")
    if args.serve:
        results["serve"] = serve(args)
        print_snapshots("fastlm serve (one process, real HTTP on loopback)", results["serve"])
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
