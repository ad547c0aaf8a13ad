"""Real tokenizers for the Python front-end tests (registered by conftest.py).

Llama-3 and Qwen3 tokenizer folders come from the test cache (tokenizer_data.py; fetched by
scripts/test_data.sh), SmolLM2's from the default model's GGUF in fastlm's cache. A tiny
SentencePiece-BPE GGUF ("llama" tokenizer model) is trained on the fly.
"""

from __future__ import annotations

import functools
import io
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import sentencepiece as spm
from fastlm.default_model import ensure_default_model
from fastlm.tokenizer import load_tokenizer
from tokenizer_data import MissingTestData, tokenizer_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))  # gguf_variants

__all__ = [
    "fl_llama3",
    "fl_qwen3",
    "fl_smollm",
    "fl_spm",
    "hf_llama3",
    "hf_qwen3",
    "hf_smollm",
    "hf_spm",
    "llama3_dir",
    "qwen3_dir",
    "shared_gguf_parses",
    "smollm_gguf",
    "spm_gguf",
]


@pytest.fixture(scope="session", autouse=True)
def shared_gguf_parses() -> Iterator[None]:
    """transformers parses a GGUF with gguf.GGUFReader for its config, again for its weights and
    again for a tokenizer (the package reads SmolLM2's 49k-string arrays element by element, ~8 s
    a parse on the 2-core EPYC), and builds gguf's tensor-name map once per tensor (397 times for
    SmolLM2, ~8 s): both are pure functions of their arguments, so the session shares them
    (read-only parses go through bench/gguf_variants.read_gguf's cache, one per file version; a
    GGUFReader is not modified by its readers)."""
    from gguf_variants import read_gguf

    reader_class, name_map = gguf.GGUFReader, gguf.get_tensor_name_map

    def reader(path: Any, mode: str = "r") -> Any:
        return read_gguf(Path(path)) if mode == "r" else reader_class(path, mode)

    gguf.GGUFReader = reader  # type: ignore[assignment,misc]
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(name_map)
    yield
    gguf.GGUFReader, gguf.get_tensor_name_map = reader_class, name_map  # type: ignore[misc]


def _cached_tokenizer(name: str) -> Path:
    try:
        return tokenizer_dir(name)
    except MissingTestData as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def llama3_dir() -> Path:
    return _cached_tokenizer("llama3")


@pytest.fixture(scope="session")
def qwen3_dir() -> Path:
    return _cached_tokenizer("qwen3")


@pytest.fixture(scope="session")
def smollm_gguf() -> Path:
    return ensure_default_model()


_SPM_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! héllo wörld, naïve café",
    "def main():\n    return 42",
    "中文 字符 测试 日本語",
    "numbers 123 4567 89 and more numbers",
] * 50


@pytest.fixture(scope="session")
def spm_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A llama-architecture GGUF with a SentencePiece BPE vocabulary (tokens + scores + types,
    no merges), like Llama-2/Mistral GGUFs, plus one user-defined token."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_SPM_CORPUS),
        model_writer=model,
        vocab_size=400,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        user_defined_symbols=["<tool>"],
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        normalization_rule_name="identity",
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    n = sp.get_piece_size()
    tokens = [sp.id_to_piece(i) for i in range(n)]
    types = []
    for i in range(n):
        if sp.is_unknown(i):
            types.append(gguf.TokenType.UNKNOWN)
        elif sp.is_control(i):
            types.append(gguf.TokenType.CONTROL)
        elif sp.is_byte(i):
            types.append(gguf.TokenType.BYTE)
        elif tokens[i] == "<tool>":
            types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    folder = tmp_path_factory.mktemp("spm_gguf")
    path = folder / "tiny-spm.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_block_count(1)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(4)
    writer.add_vocab_size(n)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([sp.get_score(i) for i in range(n)])
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_chat_template(
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    )
    writer.add_tensor("token_embd.weight", np.zeros((n, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# transformers' tokenizers: the reference every test compares with (loaded once per session).


@pytest.fixture(scope="session")
def hf_llama3(llama3_dir: Path):
    import transformers  # heavy: imported when a test needs it

    return transformers.AutoTokenizer.from_pretrained(str(llama3_dir))


@pytest.fixture(scope="session")
def hf_qwen3(qwen3_dir: Path):
    import transformers  # heavy: imported when a test needs it

    return transformers.AutoTokenizer.from_pretrained(str(qwen3_dir))


@pytest.fixture(scope="session")
def hf_smollm(smollm_gguf: Path):
    import transformers  # heavy: imported when a test needs it

    return transformers.AutoTokenizer.from_pretrained(
        str(smollm_gguf.parent), gguf_file=smollm_gguf.name
    )


@pytest.fixture(scope="session")
def hf_spm(spm_gguf: Path):
    import transformers  # heavy: imported when a test needs it

    return transformers.AutoTokenizer.from_pretrained(str(spm_gguf.parent), gguf_file=spm_gguf.name)


@pytest.fixture(scope="session")
def fl_llama3(llama3_dir: Path):
    return load_tokenizer(llama3_dir)


@pytest.fixture(scope="session")
def fl_qwen3(qwen3_dir: Path):
    return load_tokenizer(qwen3_dir)


@pytest.fixture(scope="session")
def fl_smollm(smollm_gguf: Path):
    return load_tokenizer(smollm_gguf)


@pytest.fixture(scope="session")
def fl_spm(spm_gguf: Path):
    return load_tokenizer(spm_gguf)
