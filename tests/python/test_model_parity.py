"""Llama-family forward pass parity with Hugging Face transformers.

Tiny random checkpoints (2 layers, hidden 64) of every supported architecture and feature are
saved with save_pretrained (float32 and bfloat16) and run by fastlm and transformers on the same
tokens; the real SmolLM2 GGUF (the default model, from fastlm's cache) is compared with
transformers loading the same file.

Tolerances:
  float32: max |fastlm - hf| <= 1e-4 * max(1, max |hf|).
  bfloat16: transformers computes activations in bfloat16, fastlm in float32 (bf16 weights,
    matmul inputs rounded to bf16), so logits differ by bf16 rounding noise:
    max |diff| <= 0.04 * max(1, max |hf|) (measured <= 0.018) and argmax agrees on >= 90% of
    rows. Against transformers in float32 on the same bf16-rounded weights the bound is 0.02
    (measured <= 0.011).
  GGUF (float32, 30 layers): max |diff| <= 1e-4 * max(1, max |hf|), argmax identical.
  Chunked prefill vs one shot: 2e-4 relative in float32, 2e-2 in bfloat16 (see the test).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
import transformers
from fastlm import _core as core

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

VOCAB = 512
SEQ_LEN = 24
BASE: dict[str, Any] = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5,
}

# name -> (transformers config class, overrides)
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", {}),
    "llama_linear": ("LlamaConfig", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    "llama3": (
        "LlamaConfig",
        {
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
            "rope_theta": 500000.0,
        },
    ),
    "llama_yarn": (
        "LlamaConfig",
        {
            "rope_scaling": {
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 64,
            }
        },
    ),
    "llama_tied": ("LlamaConfig", {"tie_word_embeddings": True}),
    "llama_head_dim": ("LlamaConfig", {"head_dim": 32}),
    "llama_mqa": ("LlamaConfig", {"num_key_value_heads": 1}),
    "llama_bias": ("LlamaConfig", {"attention_bias": True, "num_key_value_heads": 4}),
    "mistral_sliding": ("MistralConfig", {"sliding_window": 8}),
    "qwen2_tied": ("Qwen2Config", {"tie_word_embeddings": True}),
    "qwen2_sliding": (
        "Qwen2Config",
        {"use_sliding_window": True, "sliding_window": 6, "max_window_layers": 1},
    ),
    "qwen3": ("Qwen3Config", {"head_dim": 32}),
}
MODEL_CLASSES = {
    "LlamaConfig": "LlamaForCausalLM",
    "MistralConfig": "MistralForCausalLM",
    "Qwen2Config": "Qwen2ForCausalLM",
    "Qwen3Config": "Qwen3ForCausalLM",
}


def _build(name: str) -> Any:
    config_cls, overrides = CASES[name]
    config = getattr(transformers, config_cls)(**{**BASE, **overrides})
    torch.manual_seed(sum(map(ord, name)))
    model = getattr(transformers, MODEL_CLASSES[config_cls])(config).eval()
    # Larger-than-default weights so logits are far from uniform and argmax is meaningful.
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.1)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


class _Checkpoints(dict[str, dict[str, Any]]):
    """name -> {"hf", "hf_bf16", "hf_bf16w", "f32", "bf16"}, built on first use."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def __missing__(self, name: str) -> dict[str, Any]:
        model = _build(name)
        f32 = self.root / f"{name}_f32"
        bf16 = self.root / f"{name}_bf16"
        model.save_pretrained(f32, safe_serialization=True)
        _build(name).to(torch.bfloat16).save_pretrained(bf16, safe_serialization=True)
        # Loaded back, not cast with .to(): .to() would also round the rotary inv_freq buffer.
        model_cls = type(model)
        entry = {
            "hf": model,
            "hf_bf16": model_cls.from_pretrained(bf16, dtype=torch.bfloat16).eval(),
            # float32 compute on the bf16-rounded weights
            "hf_bf16w": model_cls.from_pretrained(bf16, dtype=torch.float32).eval(),
            "f32": str(f32),
            "bf16": str(bf16),
        }
        self[name] = entry
        return entry


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    return _Checkpoints(tmp_path_factory.mktemp("model_parity"))


def _tokens(seed: int, n: int = SEQ_LEN) -> list[int]:
    return np.random.default_rng(seed).integers(0, VOCAB, size=n).tolist()


def _hf_logits(model: Any, tokens: list[int]) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.tensor([tokens])).logits[0]
    return out.float().numpy()


def _scale(ref: np.ndarray) -> float:
    return max(1.0, float(np.abs(ref).max()))


@pytest.mark.parametrize("name", list(CASES))
def test_logits_float32(checkpoints: dict[str, dict[str, Any]], name: str) -> None:
    ck = checkpoints[name]
    model = core.load_model(ck["f32"], dtype="float32")
    assert model.compute_dtype == "float32"
    assert model.load_notes == []
    tokens = _tokens(1)
    ref = _hf_logits(ck["hf"], tokens)
    got = model.forward_logits(tokens)
    assert got.shape == ref.shape
    err = float(np.abs(got - ref).max())
    assert err <= 1e-4 * _scale(ref), f"{name}: max abs diff {err}, scale {_scale(ref)}"


@pytest.mark.parametrize("name", ["llama", "llama_tied", "mistral_sliding", "qwen2_tied", "qwen3"])
def test_logits_bfloat16(checkpoints: dict[str, dict[str, Any]], name: str) -> None:
    ck = checkpoints[name]
    model = core.load_model(ck["bf16"])  # "auto" follows the checkpoint's dtype
    assert model.compute_dtype == "bfloat16"
    tokens = _tokens(2)
    got = model.forward_logits(tokens)
    ref_bf16 = _hf_logits(ck["hf_bf16"], tokens)
    err = float(np.abs(got - ref_bf16).max())
    assert err <= 0.04 * _scale(ref_bf16), f"{name}: bf16 max abs diff {err}"
    agree = float(np.mean(got.argmax(-1) == ref_bf16.argmax(-1)))
    assert agree >= 0.9, f"{name}: argmax agrees on {agree:.0%} of rows"
    # Same bf16 weights, float32 activations on both sides: much closer.
    ref_f32 = _hf_logits(ck["hf_bf16w"], tokens)
    err32 = float(np.abs(got - ref_f32).max())
    assert err32 <= 0.02 * _scale(ref_f32), f"{name}: vs fp32-on-bf16-weights diff {err32}"


def test_auto_dtype_of_a_float32_checkpoint(checkpoints: dict[str, dict[str, Any]]) -> None:
    """vLLM's rule: "auto" downcasts a float32 checkpoint to a half type. Ours is bfloat16, and
    only where the active ISA has native bf16 dot products (avx512bf16); else float32 stays."""
    ck = checkpoints["llama"]
    ops = core.ops
    expected = "bfloat16" if ops.isa() == "avx512bf16" else "float32"
    model = core.load_model(ck["f32"])
    assert model.compute_dtype == expected
    downcast_notes = [n for n in model.load_notes if "computed in bfloat16" in n]
    assert len(downcast_notes) == (1 if expected == "bfloat16" else 0)
    if expected == "bfloat16":
        assert "--dtype float32" in downcast_notes[0]
        # Same numbers as asking for bfloat16 explicitly.
        tokens = _tokens(11)
        explicit = core.load_model(ck["f32"], dtype="bfloat16").forward_logits(tokens)
        np.testing.assert_array_equal(model.forward_logits(tokens), explicit)
    # Explicit dtypes are never overridden, and a bf16 checkpoint stays bf16.
    assert core.load_model(ck["f32"], dtype="float32").compute_dtype == "float32"
    assert core.load_model(ck["bf16"]).compute_dtype == "bfloat16"
    assert core.load_model(ck["bf16"]).load_notes == []
    # Below avx512bf16 (FASTLM_ISA / set_isa), bfloat16 does not pay off: float32 stays.
    if ops.detected_isa() in ("avx512", "avx512bf16"):
        previous = ops.isa()
        ops.set_isa("avx512")
        try:
            lowered = core.load_model(ck["f32"])
            assert lowered.compute_dtype == "float32"
            assert lowered.load_notes == []
            assert core.load_model(ck["bf16"]).compute_dtype == "bfloat16"
        finally:
            ops.set_isa(previous)


def test_explicit_dtype_conversions(checkpoints: dict[str, dict[str, Any]]) -> None:
    ck = checkpoints["llama"]
    as_bf16 = core.load_model(ck["f32"], dtype="bfloat16")
    assert as_bf16.compute_dtype == "bfloat16"
    as_f32 = core.load_model(ck["bf16"], dtype="float32")
    assert as_f32.compute_dtype == "float32"
    tokens = _tokens(3)
    # bf16 checkpoint computed in f32 == HF f32 on the same (bf16-valued) weights.
    ref = _hf_logits(ck["hf_bf16w"], tokens)
    assert float(np.abs(as_f32.forward_logits(tokens) - ref).max()) <= 1e-4 * _scale(ref)
    with pytest.raises(ValueError, match="unsupported dtype"):
        core.load_model(ck["f32"], dtype="int8")


def test_float16_checkpoint_computes_in_float32(
    checkpoints: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    ck = checkpoints["qwen3"]
    _build("qwen3").to(torch.float16).save_pretrained(tmp_path, safe_serialization=True)
    model = core.load_model(str(tmp_path))
    assert model.compute_dtype == "float32"
    assert any("float16" in note for note in model.load_notes)
    ref_model = type(ck["hf"]).from_pretrained(tmp_path, dtype=torch.float32).eval()
    tokens = _tokens(10)
    ref = _hf_logits(ref_model, tokens)
    assert float(np.abs(model.forward_logits(tokens) - ref).max()) <= 1e-4 * _scale(ref)


@pytest.mark.parametrize("name", ["llama", "mistral_sliding", "qwen2_sliding", "qwen3"])
def test_greedy_generation_matches_generate(
    checkpoints: dict[str, dict[str, Any]], name: str
) -> None:
    ck = checkpoints[name]
    model = core.load_model(ck["f32"], dtype="float32")
    prompt = _tokens(4, 8)
    with torch.no_grad():
        expected = (
            ck["hf"]
            .generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False)[0, len(prompt) :]
            .tolist()
        )
    seq = list(prompt)
    for _ in range(32):
        seq.append(int(model.forward_logits(seq)[-1].argmax()))
    assert seq[len(prompt) :] == expected
    # The decode path (one token per step through the paged cache) picks the same tokens.
    logits = model.forward_chunks(seq, [len(prompt)] + [1] * 32, block_size=4)
    assert logits[len(prompt) - 1 : -1].argmax(-1).tolist() == expected


@pytest.mark.parametrize("name", ["llama", "qwen2_sliding", "mistral_sliding"])
@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_chunked_prefill_matches_one_shot(
    checkpoints: dict[str, dict[str, Any]], name: str, dtype: str
) -> None:
    model = core.load_model(
        checkpoints[name][dtype], dtype="float32" if dtype == "f32" else "bfloat16"
    )
    tokens = _tokens(5, 40)
    one_shot = model.forward_logits(tokens, block_size=16)
    # bf16 weights round matmul inputs to bf16, so last-bit differences between the prefill and
    # decode kernels can flip an activation's rounding: compare more loosely there.
    tol = 2e-4 if dtype == "f32" else 2e-2
    for chunks, block_size in (([5, 7, 1, 1, 10, 16], 16), ([17, 23], 4), ([1] * 40, 8)):
        chunked = model.forward_chunks(tokens, chunks, block_size=block_size)
        np.testing.assert_allclose(chunked, one_shot, atol=tol * _scale(one_shot), rtol=0)
        agree = float(np.mean(chunked.argmax(-1) == one_shot.argmax(-1)))
        assert agree >= (1.0 if dtype == "f32" else 0.95)


def test_flat_batch_of_sequences_matches_single(checkpoints: dict[str, dict[str, Any]]) -> None:
    model = core.load_model(checkpoints["qwen3"]["f32"], dtype="float32")
    seqs = [_tokens(6, 13), _tokens(7, 30), _tokens(8, 1)]
    batched = model.forward_batch(seqs, [[13], [10, 20], [1]], block_size=4)
    for seq, got in zip(seqs, batched, strict=True):
        ref = model.forward_logits(seq)
        np.testing.assert_allclose(got, ref, atol=2e-4 * _scale(ref), rtol=0)


def test_config_and_errors(checkpoints: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    model = core.load_model(checkpoints["qwen2_sliding"]["f32"])
    cfg = model.config
    assert cfg["architecture"] == "Qwen2ForCausalLM"
    assert cfg["attention_bias"] is True
    assert cfg["sliding_window"] == 6
    assert cfg["layer_uses_sliding_window"] == [False, True]
    assert model.weight_bytes > 0
    (tmp_path / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"]}')
    with pytest.raises(RuntimeError, match="unsupported architecture GPT2LMHeadModel"):
        core.load_model(str(tmp_path))
    with pytest.raises(ValueError, match="neither a folder"):
        core.load_model(str(tmp_path / "nope"))
    # A checkpoint missing a tensor names it.
    from safetensors.numpy import load_file, save_file

    broken = tmp_path / "broken"
    broken.mkdir()
    src = Path(checkpoints["llama"]["f32"])
    (broken / "config.json").write_text((src / "config.json").read_text())
    tensors = load_file(src / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, broken / "model.safetensors")
    with pytest.raises(RuntimeError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        core.load_model(str(broken))


def test_sharded_checkpoint(checkpoints: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    ck = checkpoints["llama"]
    ck["hf"].save_pretrained(tmp_path, safe_serialization=True, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    tokens = _tokens(9)
    one = core.load_model(ck["f32"], dtype="float32").forward_logits(tokens)
    sharded = core.load_model(str(tmp_path), dtype="float32").forward_logits(tokens)
    np.testing.assert_array_equal(one, sharded)


# --- GGUF ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def smollm2_hf(smollm_gguf: Path, hf_smollm: Any) -> tuple[str, str, Any, Any]:
    import accelerate  # noqa: F401 - transformers needs it to load GGUF files

    folder, name = str(smollm_gguf.parent), smollm_gguf.name
    tok = hf_smollm  # transformers' tokenizer read from the same GGUF (a session fixture)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32
    ).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return folder, name, tok, model


@pytest.mark.slow  # the gguf package dequantizes every tensor type of the 135M model in Python
def test_gguf_dequantize_matches_gguf_package(smollm_gguf: Path) -> None:
    from gguf_variants import read_gguf

    path = str(smollm_gguf)
    reader = read_gguf(smollm_gguf)  # the gguf package's reader, parsed once per test session
    seen: set[str] = set()
    for t in reader.tensors:
        if t.tensor_type.name in seen:
            continue
        seen.add(t.tensor_type.name)
        ref = gguf.dequantize(t.data, t.tensor_type).reshape([int(d) for d in reversed(t.shape)])
        got = core.gguf_dequantize(path, t.name)
        np.testing.assert_array_equal(got, ref.astype(np.float32), err_msg=t.name)
    assert {"Q4_1", "Q8_0", "F32"} <= seen


@pytest.mark.parametrize(
    "qtype",
    [
        *("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"),
        *("IQ4_NL", "IQ4_XS"),
    ],
)
def test_gguf_dequantize_all_block_types(tmp_path: Path, qtype: str) -> None:
    q = gguf.GGMLQuantizationType[qtype]
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[q]
    rows, blocks_per_row = 3, 2
    rng = np.random.default_rng(10)
    raw = rng.integers(0, 256, size=(rows * blocks_per_row, block_bytes), dtype=np.uint8)
    # Random bytes in the f16 scale fields could be inf/NaN: put small finite scales there.
    scale_offsets = {
        "Q4_0": [0],
        "Q4_1": [0, 2],
        "Q5_0": [0],
        "Q5_1": [0, 2],
        "Q8_0": [0],
        "Q2_K": [80, 82],
        "Q3_K": [108],
        "Q4_K": [0, 2],
        "Q5_K": [0, 2],
        "Q6_K": [208],
        "IQ4_NL": [0],
        "IQ4_XS": [0],
    }[qtype]
    for off in scale_offsets:
        scales = rng.uniform(-0.1, 0.1, size=rows * blocks_per_row).astype(np.float16)
        raw[:, off : off + 2] = scales.view(np.uint8).reshape(-1, 2)
    raw = raw.reshape(rows, blocks_per_row * block_bytes)
    path = tmp_path / f"{qtype}.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("t.weight", raw, raw_dtype=q)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    t = gguf.GGUFReader(str(path)).tensors[0]
    ref = gguf.dequantize(t.data, t.tensor_type).reshape(rows, blocks_per_row * block_elems)
    got = core.gguf_dequantize(str(path), "t.weight")
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_gguf_logits_and_greedy_match_transformers(
    smollm2_hf: tuple[str, str, Any, Any],
) -> None:
    folder, name, tok, hf = smollm2_hf
    # The dequantized float32 path (quantization="none") is the one exactly comparable to
    # transformers' dequantized model; the packed default is checked against it in test_quant.
    model = core.load_model(os.path.join(folder, name), dtype="float32", quantization="none")
    cfg = model.config
    assert cfg["architecture"] == "LlamaForCausalLM"
    assert cfg["tie_word_embeddings"] is True
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["vocab_size"]) == (30, 576, 49152)
    assert cfg["eos_token_ids"] == [2]
    prompts = [
        "The capital of France is",
        "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
    ]
    for prompt in prompts:
        ids = tok(prompt).input_ids
        ref = _hf_logits(hf, ids)
        got = model.forward_logits(ids)
        err = float(np.abs(got - ref).max())
        assert err <= 1e-4 * _scale(ref), f"{prompt!r}: max abs diff {err}, scale {_scale(ref)}"
        assert (got.argmax(-1) == ref.argmax(-1)).all()
    ids = tok(prompts[0]).input_ids
    with torch.no_grad():
        expected = hf.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)[
            0, len(ids) :
        ].tolist()
    # Greedy decoding yields `expected` iff the logits after the prompt and expected[:t] pick
    # expected[t] for every t: one causal forward over the whole sequence checks all 32 steps
    # (a row does not depend on the tokens after it, nor on the length: test_invariance).
    seq = ids + expected
    assert model.forward_logits(seq)[len(ids) - 1 : -1].argmax(-1).tolist() == expected
    # The decode path (one token per step through the paged cache) picks the same tokens.
    logits = model.forward_chunks(seq, [len(ids)] + [1] * 32)
    assert logits[len(ids) - 1 : -1].argmax(-1).tolist() == expected
