"""Tiny random Hugging Face checkpoints built on demand (cached per process)."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

_TMP = tempfile.TemporaryDirectory(prefix="fastlm-tiny-")  # removed at interpreter exit
_ROOT = Path(_TMP.name)


@functools.cache
def tiny_llama(
    dtype: str = "float32",
    vocab: int = 512,
    std: float = 0.15,
    norms: tuple[float, float] | None = None,
    **overrides: Any,
) -> str:
    """A 2-layer LlamaForCausalLM saved with save_pretrained; returns its folder. Matrices are
    drawn from N(0, std), norm weights from U(norms) when given (else left at one)."""
    import torch
    import transformers

    cfg = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        eos_token_id=vocab - 1,
        bos_token_id=0,
    )
    cfg.update(overrides)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg))
    # Larger weights than the default init: peaked, varied next-token distributions.
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if norms is not None and "norm" in pname:
                p.uniform_(*norms)
            elif p.dim() == 2:
                p.normal_(0.0, std)
    model = model.to(getattr(torch, dtype))
    knobs = {**overrides, "std": std, "norms": norms}
    name = "llama-" + dtype + "-" + "-".join(f"{k}={v}" for k, v in sorted(knobs.items()))
    out = _ROOT / name
    model.save_pretrained(out, safe_serialization=True)
    return str(out)


@functools.cache
def tiny_whisper(
    tokenizer_dir: str, dtype: str = "float32", num_mel_bins: int = 80, multilingual: bool = False
) -> str:
    """A 2+2-layer WhisperForConditionalGeneration (d_model 64) with tiny.en's vocabulary,
    tokenizer and suppress-token lists (from its CTranslate2 config.json, written as a
    generation_config.json); returns its folder. `multilingual`: large-v3's layout instead
    (vocabulary 51866 with 100 language tokens, <|translate|>/<|transcribe|>, the multilingual
    special-token ids, and a generation_config.json as Hugging Face ships it: lang_to_id,
    task_to_id, is_multilingual, forced_decoder_ids, alignment_heads); its text tokens are
    tiny.en's BPE (a random model needs no real multilingual merges)."""
    import json
    import shutil

    import torch
    import transformers

    ct2 = json.loads((Path(tokenizer_dir) / "config.json").read_text())
    tokenizer = json.loads((Path(tokenizer_dir) / "tokenizer.json").read_text())
    remap: dict[int, int] = {}
    if multilingual:
        tokenizer, remap = _multilingual_tokenizer(tokenizer)
    special = {a["content"]: a["id"] for a in tokenizer["added_tokens"]}
    eot, sot = special["<|endoftext|>"], special["<|startoftranscript|>"]
    cfg = transformers.WhisperConfig(
        vocab_size=51866 if multilingual else 51864,
        num_mel_bins=num_mel_bins,
        d_model=64,
        encoder_layers=2,
        encoder_attention_heads=4,
        decoder_layers=2,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=1500,
        max_target_positions=448,
        decoder_start_token_id=sot,
        eos_token_id=eot,
        pad_token_id=50256,
        bos_token_id=eot,
    )
    torch.manual_seed(0)
    model = transformers.WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed_positions" in name:
                continue  # the encoder's are sinusoidal; keep the decoder's init too
            if "layer_norm" in name:
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.normal_(0.0, 0.1)
            elif multilingual and "embed_tokens" not in name:
                # No biases and larger matrices: greedy output that depends on the audio and
                # on the language and task tokens instead of repeating one token.
                p.zero_() if p.dim() == 1 else p.normal_(0.0, 0.3)
            else:
                p.normal_(0.0, 0.15)
    model = model.to(getattr(torch, dtype))
    kind = "multilingual" if multilingual else "en"
    out = _ROOT / f"whisper-{kind}-{dtype}-{num_mel_bins}"
    model.save_pretrained(out, safe_serialization=True)
    gen: dict[str, Any] = {
        "decoder_start_token_id": sot,
        "eos_token_id": eot,
        "suppress_tokens": [remap.get(t, t) for t in ct2["suppress_ids"]],
        "begin_suppress_tokens": [remap.get(t, t) for t in ct2["suppress_ids_begin"]],
        "max_length": 448,
    }
    if multilingual:
        gen.update(
            is_multilingual=True,
            lang_to_id={k: v for k, v in special.items() if _is_language(k)},
            task_to_id={
                "transcribe": special["<|transcribe|>"],
                "translate": special["<|translate|>"],
            },  # fmt: skip
            no_timestamps_token_id=special["<|notimestamps|>"],
            prev_sot_token_id=special["<|startofprev|>"],
            forced_decoder_ids=[[1, None], [2, special["<|transcribe|>"]]],
            alignment_heads=[[1, 0], [1, 2]],
            max_initial_timestamp_index=50,
        )
        (out / "tokenizer.json").write_text(json.dumps(tokenizer))
    else:
        shutil.copy(Path(tokenizer_dir) / "tokenizer.json", out / "tokenizer.json")
    (out / "generation_config.json").write_text(json.dumps(gen))
    return str(out)


def _is_language(token: str) -> bool:
    code = token[2:-2]
    return token.startswith("<|") and 2 <= len(code) <= 3 and code.isalpha() and code.islower()


def _multilingual_tokenizer(en: dict[str, Any]) -> tuple[dict[str, Any], dict[int, int]]:
    """tiny.en's tokenizer.json with large-v3's special-token ids: <|endoftext|> 50257,
    <|startoftranscript|> 50258, 100 languages (<|yue|> last) from 50259, then <|translate|>
    50359 .. <|notimestamps|> 50364 (<|nocaptions|> becomes <|nospeech|>); id 50256 is a text
    token no merge produces. Returns it and the old -> new id map of the special tokens."""
    import copy

    tok = copy.deepcopy(en)
    old = sorted(tok["added_tokens"], key=lambda a: a["id"])
    names = [a["content"] for a in old]
    last_language = max(i for i, n in enumerate(names) if _is_language(n))
    names.insert(last_language + 1, "<|yue|>")
    names = ["<|nospeech|>" if n == "<|nocaptions|>" else n for n in names]
    template = old[0]
    tok["added_tokens"] = [{**template, "id": 50257 + i, "content": n} for i, n in enumerate(names)]
    new_ids = {a["content"]: a["id"] for a in tok["added_tokens"]}
    remap = {a["id"]: new_ids.get(a["content"], new_ids["<|nospeech|>"]) for a in old}
    vocab = tok["model"]["vocab"]
    vocab.pop("<|endoftext|>", None)
    vocab["\u0120fastlmfiller"] = 50256
    vocab["<|endoftext|>"] = 50257
    post = tok.get("post_processor") or {}
    for entry in (post.get("special_tokens") or {}).values():
        entry["ids"] = [new_ids[t] for t in entry["tokens"]]
    return tok, remap
