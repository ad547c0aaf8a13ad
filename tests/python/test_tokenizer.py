"""fastlm.tokenizer against transformers' AutoTokenizer on real tokenizers."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from fastlm.generation_config import default_sampling_params, eos_token_ids, read_generation_config
from fastlm.model_files import ModelNotFoundError, resolve_model
from fastlm.tokenizer import Tokenizer, load_tokenizer

TEXTS = [
    "",
    "Hello world",
    " Hello world",
    "  leading and trailing spaces  ",
    "emoji 🤗🚀👩‍👩‍👧 and 中文字符 and Ünïcödé",
    "日本語のテキスト、句読点。",
    "tabs\t\tand\n\n\nnewlines  \n ",
    "a  b   c    d     e",
    "numbers 1234567 3.14159 -42 1e-9 0x1F",
    "def f(x):\n    return x**2  # comment\n\nclass A:\n\tpass\n",
    "I'm you're DON'T they'll we've",
    "<|im_start|>user\nhi<|im_end|>\n",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
    "<|endoftext|>text after eos",
    "<think>reasoning</think> answer",
    "\u00a0nbsp\u200bzero-width\u202fnarrow",
    "ＡＢＣ full width ｱｲｳ",
    "e\u0301 combining vs é precomposed",
    "<s>[INST] hi [/INST]</s>",
    "<tool> user-defined token",
    "https://example.com/path?q=1&r=2#frag",
    '{"json": [1, 2, {"k": null}]}',
    "Ω≈ç√∫˜µ≤≥÷ ∀∂∈ℝ∧∪≡∞ ↑↗↨↻⇣",
    "\r\n windows line\r\nendings",
]

# SmolLM2's reference tokenizer is transformers reading the 98 MB GGUF: slow to build.
PAIRS = [
    pytest.param(("fl_llama3", "hf_llama3"), id="llama3"),
    pytest.param(("fl_qwen3", "hf_qwen3"), id="qwen3"),
    pytest.param(("fl_smollm", "hf_smollm"), id="smollm", marks=[pytest.mark.slow]),
    pytest.param(("fl_spm", "hf_spm"), id="spm"),
]


@pytest.fixture(params=PAIRS)
def pair(request: pytest.FixtureRequest) -> tuple[Tokenizer, Any]:
    fl_name, hf_name = request.param
    return request.getfixturevalue(fl_name), request.getfixturevalue(hf_name)


def test_encode_matches_transformers(pair: tuple[Tokenizer, Any]) -> None:
    ours, ref = pair
    for text in TEXTS:
        for add_special in (True, False):
            assert ours.encode(text, add_special_tokens=add_special) == ref.encode(
                text, add_special_tokens=add_special
            ), (text, add_special)
    assert ours.encode_batch(TEXTS) == [ref.encode(t) for t in TEXTS]


def test_decode_matches_transformers(pair: tuple[Tokenizer, Any]) -> None:
    ours, ref = pair
    for text in TEXTS:
        ids = ref.encode(text)
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(
                ids, skip_special_tokens=skip
            ), (text, skip)


def test_decode_random_ids_matches_transformers(pair: tuple[Tokenizer, Any]) -> None:
    ours, ref = pair
    rng = random.Random(1234)
    n = len(ref)
    for _ in range(100):
        ids = [rng.randrange(n) for _ in range(rng.randrange(1, 12))]
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(
                ids, skip_special_tokens=skip
            )
    ids = [rng.randrange(n) for _ in range(50)]
    assert ours.convert_ids_to_tokens(ids) == ref.convert_ids_to_tokens(ids)


def test_vocab_and_special_tokens_match(pair: tuple[Tokenizer, Any]) -> None:
    ours, ref = pair
    assert ours.vocab_size == len(ref)
    assert len(ours) == len(ref)
    assert ours.special_tokens_map == ref.special_tokens_map
    assert ours.all_special_ids == ref.all_special_ids
    assert ours.bos_token_id == ref.bos_token_id
    assert ours.eos_token_id == ref.eos_token_id
    assert ours.pad_token_id == ref.pad_token_id
    assert ours.unk_token_id == ref.unk_token_id
    assert ours.model_max_length == ref.model_max_length
    assert ours.chat_template == ref.chat_template
    for token_id in (0, 1, 2, ours.vocab_size - 1):
        token = ours.id_to_token(token_id)
        assert token == ref.convert_ids_to_tokens(token_id)
        assert token is not None and ours.token_to_id(token) == token_id
    added_special = {i for i, t in ref.added_tokens_decoder.items() if t.special}
    assert ours.added_special_ids == added_special


def test_smollm_gguf_details(fl_smollm: Tokenizer) -> None:
    assert fl_smollm.vocab_size == 49152
    assert fl_smollm.eos_token == "<|im_end|>"
    assert fl_smollm.eos_token_ids == [2]
    assert not fl_smollm.add_bos_token
    assert fl_smollm.encode("<|im_start|>user") == [1, 4093]
    assert fl_smollm.chat_template is not None and "<|im_start|>" in fl_smollm.chat_template
    # Control tokens stay whole and are dropped on decode.
    assert fl_smollm.decode([1, 4093, 2]) == "user"


def test_spm_gguf_adds_bos_and_keeps_user_tokens(fl_spm: Tokenizer) -> None:
    ids = fl_spm.encode("a <tool> b")
    assert ids[0] == fl_spm.bos_token_id == 1
    tool_id = fl_spm.token_to_id("<tool>")
    assert tool_id in ids
    # user-defined tokens are text: they survive skip_special_tokens
    assert "<tool>" in fl_spm.decode(ids)
    # byte fallback for characters outside the vocabulary
    assert fl_spm.decode(fl_spm.encode("😀 ok")) == "😀 ok"


def test_hf_config_bos_eos_and_added_tokens(tmp_path: Path, llama3_dir: Path) -> None:
    # A copy of the Llama-3 folder whose config asks for BOS and EOS and declares a new token.
    (tmp_path / "tokenizer.json").write_bytes((llama3_dir / "tokenizer.json").read_bytes())
    config = json.loads((llama3_dir / "tokenizer_config.json").read_text())
    config["add_bos_token"] = True
    config["add_eos_token"] = True
    config["chat_template"] = [
        {"name": "default", "template": "D"},
        {"name": "tool_use", "template": "T"},
    ]
    config["additional_special_tokens"] = ["<|my_special|>"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(tmp_path)
    import transformers

    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    for text in ("hello", "a <|my_special|> b", ""):
        assert tok.encode(text) == ref.encode(text)
        assert tok.decode(tok.encode(text), skip_special_tokens=False) == ref.decode(
            ref.encode(text)
        )
    # transformers lets tokenizer.json's post-processor decide, over add_bos_token/add_eos_token.
    assert tok.encode("hello") == [15339]
    assert not tok.add_bos_token and not tok.add_eos_token
    assert tok.token_to_id("<|my_special|>") in tok.encode("a <|my_special|> b")
    assert tok.chat_template == "D"
    assert tok.get_chat_template(has_tools=True) == "T"
    assert tok.get_chat_template("tool_use") == "T"
    assert tok.all_special_ids == ref.all_special_ids
    assert len(tok) == len(ref)


def test_default_model_and_resolve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smollm_gguf: Path
) -> None:
    path = smollm_gguf
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    files = resolve_model(None)
    assert files.is_gguf and files.gguf_file == str(path)
    assert resolve_model(str(path)).is_gguf

    # An HF folder, and the same folder found through a fake hub cache.
    snapshot = tmp_path / "hub" / "models--org--tiny" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (tmp_path / "hub" / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--tiny" / "refs" / "main").write_text("abc123")
    (snapshot / "config.json").write_text("{}")
    (snapshot / "generation_config.json").write_text(
        json.dumps(
            {
                "temperature": 0.6,
                "top_p": 0.9,
                "top_k": None,
                "max_new_tokens": 64,
                "eos_token_id": [7, 8],
            }
        )
    )
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    files = resolve_model("org/tiny")
    assert not files.is_gguf and files.model_dir == str(snapshot.resolve())
    assert files.config_path is not None and files.generation_config["temperature"] == 0.6
    assert default_sampling_params(files.generation_config) == {
        "temperature": 0.6,
        "top_p": 0.9,
        "max_tokens": 64,
    }
    assert eos_token_ids(read_generation_config(snapshot)) == [7, 8]
    assert resolve_model(str(snapshot)).config_path == str(snapshot.resolve() / "config.json")

    with pytest.raises(ModelNotFoundError, match="Hugging Face cache"):
        resolve_model("org/absent-model")
    with pytest.raises(ModelNotFoundError):
        resolve_model(str(tmp_path / "nothing" / "here" / "x.bin"))
