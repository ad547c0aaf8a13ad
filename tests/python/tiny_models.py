"""Tiny random Hugging Face checkpoints built on demand (cached per process)."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

_TMP = tempfile.TemporaryDirectory(prefix="fastlm-tiny-")  # removed at interpreter exit
_ROOT = Path(_TMP.name)


@functools.cache
def tiny_llama(dtype: str = "float32", vocab: int = 512, **overrides: Any) -> str:
    """A 2-layer LlamaForCausalLM saved with save_pretrained; returns its folder."""
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
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.15)
    model = model.to(getattr(torch, dtype))
    name = "llama-" + dtype + "-" + "-".join(f"{k}={v}" for k, v in sorted(overrides.items()))
    out = _ROOT / name
    model.save_pretrained(out, safe_serialization=True)
    return str(out)
