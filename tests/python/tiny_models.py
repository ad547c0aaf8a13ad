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
def tiny_whisper(tokenizer_dir: str, dtype: str = "float32", num_mel_bins: int = 80) -> str:
    """A 2+2-layer WhisperForConditionalGeneration (d_model 64) with tiny.en's vocabulary,
    tokenizer and suppress-token lists (from its CTranslate2 config.json, written as a
    generation_config.json); returns its folder."""
    import json
    import shutil

    import torch
    import transformers

    ct2 = json.loads((Path(tokenizer_dir) / "config.json").read_text())
    cfg = transformers.WhisperConfig(
        vocab_size=51864,
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
        decoder_start_token_id=50257,
        eos_token_id=50256,
        pad_token_id=50256,
        bos_token_id=50256,
    )
    torch.manual_seed(0)
    model = transformers.WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed_positions" in name:
                continue  # the encoder's are sinusoidal; keep the decoder's init too
            if "layer_norm" in name:
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.normal_(0.0, 0.1)
            else:
                p.normal_(0.0, 0.15)
    model = model.to(getattr(torch, dtype))
    out = _ROOT / f"whisper-{dtype}-{num_mel_bins}"
    model.save_pretrained(out, safe_serialization=True)
    shutil.copy(Path(tokenizer_dir) / "tokenizer.json", out / "tokenizer.json")
    gen = {
        "decoder_start_token_id": 50257,
        "eos_token_id": 50256,
        "suppress_tokens": ct2["suppress_ids"],
        "begin_suppress_tokens": ct2["suppress_ids_begin"],
        "max_length": 448,
    }
    (out / "generation_config.json").write_text(json.dumps(gen))
    return str(out)
