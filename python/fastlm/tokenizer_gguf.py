"""A GGUF file's tokenizer: the backend rebuilt from llama.cpp's `tokenizer.ggml.*` metadata,
the way transformers' `from_pretrained(..., gguf_file=...)` rebuilds it, so both give the same
ids.
"""

import os
from typing import Any

from tokenizers import AddedToken, Regex, decoders, pre_tokenizers
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers.models import BPE

from fastlm.tokenizer_hf import Tokenizer

# llama.cpp token types (llama_token_type / gguf.TokenType).
_TOKEN_TYPE_CONTROL = 3
_TOKEN_TYPE_USER_DEFINED = 4

# Pre-tokenizer splits named by tokenizer.ggml.pre: the regex the merges were learned with.
_SPLIT_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLIT_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLIT_QWEN35 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LETTERS_UPPER = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]"
_LETTERS_LOWER = r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
_SPLIT_TEKKEN = (
    rf"[^\r\n\p{{L}}\p{{N}}]?{_LETTERS_UPPER}*{_LETTERS_LOWER}+"
    rf"|[^\r\n\p{{L}}\p{{N}}]?{_LETTERS_UPPER}+{_LETTERS_LOWER}*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLIT_GPT4O = (
    rf"[^\r\n\p{{L}}\p{{N}}]?{_LETTERS_UPPER}*{_LETTERS_LOWER}+{_CONTRACTIONS}"
    rf"|[^\r\n\p{{L}}\p{{N}}]?{_LETTERS_UPPER}+{_LETTERS_LOWER}*{_CONTRACTIONS}"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GGUF_PRE_SPLITS = {
    **dict.fromkeys(
        (
            "llama3",
            "llama-v3",
            "llama-bpe",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
            "jina-v5-nano",
            "dbrx",
            "smaug-bpe",
        ),
        _SPLIT_LLAMA3,
    ),
    "tekken": _SPLIT_TEKKEN,
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"), _SPLIT_QWEN2),
    "qwen35": _SPLIT_QWEN35,
    **dict.fromkeys(("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), _SPLIT_GPT4O),
}


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's printable spelling of each byte: printable Latin-1 bytes stand for themselves, the
    rest map to code points from 256 upwards, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _read_gguf_tokenizer(path: str) -> dict[str, Any]:
    try:
        from fastlm import _core

        meta: dict[str, Any] = _core.gguf_metadata(path, "tokenizer.")
        meta.update(_core.gguf_metadata(path, "general.architecture"))
        return meta
    except ImportError:  # tokenizer-only use without the C++ runtime built
        pass
    from gguf import GGUFReader

    reader = GGUFReader(path)
    meta = {}
    for key, fld in reader.fields.items():
        if key.startswith("tokenizer.") or key == "general.architecture":
            meta[key] = fld.contents()
    return meta


def _spm_merges(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """Merges a SentencePiece BPE vocabulary implies: every split of a token into two vocabulary
    pieces, ranked by the merged token's score (best first), then longer pieces first."""
    vocab = {t: i for i, t in enumerate(tokens)}
    per_token: list[tuple[float, int, int, str, str]] = []
    seen: set[str] = set()
    for token, score in zip(tokens, scores, strict=True):
        if token in seen:
            continue
        seen.add(token)
        local = [
            (token[:cut], token[cut:])
            for cut in range(1, len(token))
            if token[:cut] in vocab and token[cut:] in vocab
        ]
        local.sort(key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
        per_token.extend((score, len(left), len(right), left, right) for left, right in local)
    # Best score first, then longer pieces first; ties stay in the order gathered above.
    per_token.sort(key=lambda m: (-m[0], -m[1], -m[2]))
    return [(m[3], m[4]) for m in per_token]


def _build_gguf_backend(meta: dict[str, Any]) -> BackendTokenizer:
    model_type = meta.get("tokenizer.ggml.model")
    tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
    merges_raw = meta.get("tokenizer.ggml.merges")
    if model_type == "gpt2":
        spelling = _byte_alphabet()
        alphabet = set(spelling.values())
        vocab: dict[str, int] = {}
        for i, tok in enumerate(tokens):
            if not set(tok) <= alphabet:
                # Some converters store raw text; byte-level BPE needs the byte spelling.
                tok = "".join(spelling[b] for b in tok.encode("utf-8"))
            vocab[tok] = i
        if merges_raw is None:
            raise ValueError("GGUF byte-level BPE tokenizer has no tokenizer.ggml.merges")
        merges = [tuple(m.split(" ")) for m in merges_raw]
        backend = BackendTokenizer(
            BPE(
                vocab=vocab,
                merges=merges,
                dropout=None,
                continuing_subword_prefix="",
                end_of_word_suffix="",
                fuse_unk=False,
            )
        )
        split = _GGUF_PRE_SPLITS.get(str(meta.get("tokenizer.ggml.pre")))
        if split is None:
            backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        else:
            backend.pre_tokenizer = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Split(Regex(split), behavior="isolated"),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                ]
            )
        backend.decoder = decoders.ByteLevel()
        return backend
    if model_type == "llama":
        # SentencePiece BPE: "▁" marks spaces, unknown characters fall back to <0xNN> tokens.
        vocab = {tok: i for i, tok in enumerate(tokens)}
        if merges_raw is not None:
            merges = [tuple(m.split(" ")) for m in merges_raw]
        else:
            scores = [float(s) for s in meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)]
            merges = _spm_merges(tokens, scores)
        backend = BackendTokenizer(
            BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True, dropout=None)
        )
        backend.normalizer = None
        backend.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="\u2581", prepend_scheme="first", split=False
        )
        backend.decoder = decoders.Sequence(
            [
                decoders.Replace("\u2581", " "),
                decoders.ByteFallback(),
                decoders.Fuse(),
                decoders.Strip(content=" ", left=1, right=0),
            ]
        )
        return backend
    raise ValueError(
        f"Cannot build a tokenizer from GGUF tokenizer.ggml.model={model_type!r}; "
        "supported: gpt2, llama"
    )


def load_gguf_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    meta = _read_gguf_tokenizer(os.fspath(path))
    backend = _build_gguf_backend(meta)
    tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
    types: list[int] = [int(t) for t in meta.get("tokenizer.ggml.token_type") or []]
    byte_level = meta.get("tokenizer.ggml.model") == "gpt2"
    alphabet = set(_byte_alphabet().values()) if byte_level else None

    # Control tokens stay whole and are special; user-defined ones stay whole but are text.
    # A byte-level "control" token spelled outside the byte alphabet is a converter mislabel
    # (transformers skips it too, so the vocabulary size matches the model).
    control = [
        AddedToken(tok, special=True, normalized=False)
        for tok, kind in zip(tokens, types, strict=False)
        if kind == _TOKEN_TYPE_CONTROL and (alphabet is None or set(tok) <= alphabet)
    ]
    if control:
        backend.add_special_tokens(control)
    vocab = backend.get_vocab(with_added_tokens=True)
    user = [
        AddedToken(tok, special=False, normalized=False)
        for tok, kind in zip(tokens, types, strict=False)
        if kind == _TOKEN_TYPE_USER_DEFINED and tok in vocab
    ]
    if user:
        backend.add_tokens(user)

    def token_at(key: str) -> str | None:
        idx = meta.get(f"tokenizer.ggml.{key}")
        return tokens[int(idx)] if idx is not None and 0 <= int(idx) < len(tokens) else None

    special = {
        "bos_token": token_at("bos_token_id"),
        "eos_token": token_at("eos_token_id"),
        "unk_token": token_at("unknown_token_id"),
        "pad_token": token_at("padding_token_id"),
    }
    add_bos = meta.get("tokenizer.ggml.add_bos_token")
    if add_bos is None and meta.get("tokenizer.ggml.model") == "llama":
        add_bos = True  # llama.cpp's default for SentencePiece vocabularies
    add_eos = meta.get("tokenizer.ggml.add_eos_token")

    # Named templates: tokenizer.chat_templates lists the names, tokenizer.chat_template.<name>
    # holds each.
    default_template: str | None = meta.get("tokenizer.chat_template")
    template: str | dict[str, str] | None = default_template
    names = meta.get("tokenizer.chat_templates") or []
    named = {
        n: meta[f"tokenizer.chat_template.{n}"]
        for n in names
        if f"tokenizer.chat_template.{n}" in meta
    }
    if named:
        template = {**({"default": default_template} if default_template else {}), **named}

    return Tokenizer(
        backend,
        special_tokens=special,
        chat_template=template,
        add_bos_token=bool(add_bos) if add_bos is not None else False,
        add_eos_token=bool(add_eos) if add_eos is not None else False,
        name_or_path=os.fspath(path),
    )
