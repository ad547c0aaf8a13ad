"""Quantized weights (issue 12): GGUF blocks kept packed (the default) and run by the integer
kernels, and vLLM's --quantization q8_0 / q4_0 (and q4_1) on float checkpoints.

The default model (Q4_1 body, Q8_0 embeddings/lm_head) through the packed path against the same
file dequantized at load (quantization="none", the bfloat16 path): per-position logits cosine
>= 0.999 at every position and the same greedy choices wherever bf16's is no near-tie. A tiny
float checkpoint quantized at load: logits close to the float run, with the accuracy cost
measured here. Bad values are refused naming the flag.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from fastlm import _core
from tiny_models import tiny_llama

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

PROMPT = (
    "The history of the printing press begins in the fifteenth century, when Johannes "
    "Gutenberg combined movable metal type, oil-based ink and a screw press. Within decades "
    "printing spread across Europe, and books became cheaper, more numerous and more uniform."
)


def huge_pages_offered() -> bool:
    mode = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return mode.exists() and ("[always]" in mode.read_text() or "[madvise]" in mode.read_text())


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(1) / np.linalg.norm(a64, axis=1) / np.linalg.norm(b64, axis=1)


@pytest.fixture(scope="module")
def gguf_models(smollm_gguf: Path) -> tuple[_core.Model, _core.Model]:
    packed = _core.load_model(str(smollm_gguf))  # the default: packed, as quantization="gguf"
    dense = _core.load_model(str(smollm_gguf), quantization="none")
    return packed, dense


def test_gguf_weights_stay_packed(gguf_models: tuple[_core.Model, _core.Model]) -> None:
    packed, dense = gguf_models
    assert dense.compute_dtype == "bfloat16"
    # Q4_1 is 5 bits a weight, bf16 16: the packed model holds well under half the bytes.
    assert packed.weight_bytes < 0.45 * dense.weight_bytes
    if huge_pages_offered():
        # Every packed matrix moved into one huge-page buffer; their file pages were dropped.
        assert packed.mapped_weight_bytes == 0
    else:
        # o_proj, down_proj and the Q8_0 embeddings stay views of the file (q/k/v is copied).
        assert packed.mapped_weight_bytes > 0.3 * packed.weight_bytes
    assert dense.mapped_weight_bytes == 0


def test_default_model_logits_close_to_dequantized(
    gguf_models: tuple[_core.Model, _core.Model], smollm_gguf: Path
) -> None:
    from fastlm.model_files import resolve_model
    from fastlm.tokenizer import load_tokenizer

    ids = load_tokenizer(resolve_model(str(smollm_gguf))).encode(PROMPT)
    assert len(ids) > 40
    packed, dense = gguf_models
    a = packed.forward_batch([ids])[0]
    b = dense.forward_batch([ids])[0]
    cos = cosines(a, b)
    # int16 activations (per 32-block) cost less than bf16's rounding: measured min 0.99982
    # (packed vs float32 dequantized: min 0.99998; bf16 vs float32: min 0.99977).
    assert cos.min() >= 0.999, (cos.mean(), cos.min(), int(cos.argmin()))
    # Next-token choices agree at (nearly) every position of real text.
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.95


def test_projection_parts_in_different_formats_stay_packed(
    smollm_gguf: Path, tmp_path: Path
) -> None:
    """A GGUF whose q, k and v differ in format (llama.cpp's Q4_K_M keeps v at Q6_K where q and
    k are Q4_K): the fused projection stays packed, each part run by its own kernel, instead of
    dequantizing to bf16. Here v is re-quantized to Q8_0 (q and k stay Q4_1)."""
    import gguf
    from gguf_variants import requantize

    mixed = tmp_path / "mixed.gguf"
    q8 = gguf.GGMLQuantizationType.Q8_0
    written = requantize(
        smollm_gguf, mixed, lambda name, t: q8 if name.endswith("attn_v.weight") else None
    )
    kinds = {name: kind for name, (kind, _) in written.items()}
    assert kinds["blk.0.attn_v.weight"] == q8
    assert kinds["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q4_1
    stored = sum(n for _, n in written.values())

    packed = _core.load_model(str(mixed))
    dense = _core.load_model(str(mixed), quantization="none")
    # Every matrix as stored (q/k/v at bf16 would add ~21 MB to the ~100 MB file).
    assert packed.weight_bytes <= stored, (packed.weight_bytes, stored)
    if huge_pages_offered():
        # The parts moved into the huge-page buffer like any packed matrix; q and k (GGUF's
        # un-permuted copies) were never views of the file.
        assert packed.mapped_weight_bytes == 0
    rng = np.random.default_rng(3)
    for seq in ([int(t) for t in rng.integers(1, 49000, 77)], [17]):
        a = packed.forward_batch([seq])[0]
        b = dense.forward_batch([seq])[0]
        cos = cosines(a, b)
        assert cos.min() >= 0.999, (cos.mean(), cos.min())
    # Batched rows (qgemm's output stride) give each row the numbers it gets alone.
    seqs = [[int(t) for t in rng.integers(1, 49000, n)] for n in (5, 9)]
    together = packed.forward_batch(seqs)
    for seq, rows in zip(seqs, together, strict=True):
        np.testing.assert_array_equal(packed.forward_batch([seq])[0], rows)


def test_k_quant_and_iq4_files_load(smollm_gguf: Path, tmp_path: Path) -> None:
    """GGUF files in the formats of llama.cpp's Q3_K / Q2_K / IQ4 presets: Q3_K, IQ4_NL
    (llama.cpp's fallback for Q2_K / Q3_K rows that are not a multiple of 256) and IQ4_XS run
    packed as stored; Q2_K (no packed kernels yet) is quantized again to Q8_0 at load. The
    default model's weights are re-quantized (round to nearest, `gguf_variants.quantize_rtn`):
    attention projections IQ4_NL, ffn_down Q3_K in layers 0 and 2, Q2_K in layer 1 and IQ4_XS in
    layer 3 (SmolLM2's ffn_down is what llama.cpp's presets keep at higher precision:
    round-to-nearest Q3_K / Q2_K in every layer leaves only 74% / 23% of its next-token
    choices)."""
    import gguf
    from gguf_variants import read_gguf, requantize

    T = gguf.GGMLQuantizationType
    down = {0: T.Q3_K, 1: T.Q2_K, 2: T.Q3_K, 3: T.IQ4_XS}

    def target(name: str, kind: gguf.GGMLQuantizationType) -> gguf.GGMLQuantizationType | None:
        if name.endswith(("attn_q.weight", "attn_k.weight", "attn_output.weight")):
            return T.IQ4_NL
        if name.endswith("ffn_down.weight"):
            return down.get(int(name.split(".")[1]))
        return None

    path = tmp_path / "kquants.gguf"
    written = requantize(smollm_gguf, path, target)
    kinds = {name: kind for name, (kind, _) in written.items()}
    assert kinds["blk.0.attn_q.weight"] == T.IQ4_NL
    assert [kinds[f"blk.{i}.ffn_down.weight"] for i in range(4)] == [down[i] for i in range(4)]

    packed = _core.load_model(str(path))
    dense = _core.load_model(str(path), quantization="none")
    # Every matrix packed: as stored, but the Q2_K ffn_down at Q8_0's 34 bytes a block of 32
    # (bf16 would take 64).
    elems = {t.name: int(t.n_elements) for t in read_gguf(smollm_gguf).tensors}  # as the source
    per = {
        **{T.IQ4_NL: 18 / 32, T.IQ4_XS: 136 / 256, T.Q3_K: 110 / 256, T.Q2_K: 34 / 32},
        **{T.Q4_1: 20 / 32, T.Q8_0: 34 / 32},
    }
    expected = sum(elems[n] * per[k] for n, k in kinds.items() if k != T.F32)
    assert abs(packed.weight_bytes - expected) <= 0.01 * expected, (packed.weight_bytes, expected)
    notes = " ".join(packed.load_notes)
    assert "Q2_K tensors" in notes and "quantized again to Q8_0" in notes, notes
    assert "IQ4" not in notes and "Q3_K" not in notes, notes
    # The same values on both paths (but layer 1's ffn_down, Q8_0's rounding of Q2_K's values):
    # logits as close as the default model's (int16 activations against bf16 rounding).
    from fastlm.model_files import resolve_model
    from fastlm.tokenizer import load_tokenizer

    ids = load_tokenizer(resolve_model(str(smollm_gguf))).encode(PROMPT)
    a = packed.forward_batch([ids])[0]
    b = dense.forward_batch([ids])[0]
    cos = cosines(a, b)
    assert cos.min() >= 0.999, (cos.mean(), cos.min())
    # And still the model (no format decoded wrongly on both paths): most next-token choices
    # on real text are the original file's (measured 0.79; a wrong decode leaves ~0.1-0.2).
    original = _core.load_model(str(smollm_gguf)).forward_batch([ids])[0]
    agree = (a.argmax(1) == original.argmax(1)).mean()
    assert agree >= 0.7, agree


def log_softmax(x: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    m = x64.max(1, keepdims=True)
    return x64 - m - np.log(np.exp(x64 - m).sum(1, keepdims=True))


def test_default_model_greedy_choices_match_dequantized(
    gguf_models: tuple[_core.Model, _core.Model], smollm_gguf: Path
) -> None:
    """Greedy answers by the bf16 path, then both paths over that text (teacher-forced): every
    next-token choice the bf16 path makes by a margin of at least 0.1 nats, the packed path
    makes too. (Measured: the top logprob moves by at most 0.05 nats, all 96 choices agree and
    the free-running greedy texts are identical; bf16's own rounding is of the same size, so
    closer near-ties are not checked.)"""
    from fastlm import LLM, SamplingParams

    packed, dense = gguf_models
    llm = LLM(str(smollm_gguf), max_model_len=512, kv_cache_memory=16 << 20, quantization="none")
    sp = SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True)
    checked = 0
    for question in ("Tell me a story.", "What is the capital of France?"):
        out = llm.chat([{"role": "user", "content": question}], sp, use_tqdm=False)[0]
        prompt, answer = list(out.prompt_token_ids), list(out.outputs[0].token_ids)
        ids = prompt + answer
        a = log_softmax(packed.forward_batch([ids])[0][len(prompt) - 1 : -1])
        b = log_softmax(dense.forward_batch([ids])[0][len(prompt) - 1 : -1])
        assert b.argmax(1).tolist() == answer  # the engine's greedy path is this forward
        top2 = np.sort(b, axis=1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] >= 0.1
        assert (a.argmax(1)[clear] == b.argmax(1)[clear]).all(), np.nonzero(clear)[0]
        checked += int(clear.sum())
    assert checked >= 40


# Accuracy cost measured on this tiny random model (its weights have no structure to protect,
# so a worst case), over 138 positions: q8_0 cosine min 0.9977, mean 0.9994; q4_0 min 0.72,
# mean 0.93 (an untrained model's peaked logits amplify q4_0's ~8% weight noise); q4_1 (a
# minimum per block: its 16 levels span each block's own range) min 0.77, mean 0.95.
@pytest.mark.parametrize(
    ("quantization", "min_cos", "mean_cos"),
    [("q8_0", 0.995, 0.999), ("q4_0", 0.6, 0.9), ("q4_1", 0.65, 0.92)],
)
def test_quantization_of_a_float_checkpoint(
    quantization: str, min_cos: float, mean_cos: float
) -> None:
    folder = tiny_llama("float32")
    ref = _core.load_model(folder, dtype="float32")
    q = _core.load_model(folder, dtype="float32", quantization=quantization)
    assert q.weight_bytes < (0.3 if quantization == "q8_0" else 0.22) * ref.weight_bytes
    rng = np.random.default_rng(12)
    seqs = [rng.integers(1, 511, n).tolist() for n in (1, 17, 120)]
    for a, b in zip(q.forward_batch(seqs), ref.forward_batch(seqs), strict=True):
        cos = cosines(a, b)
        assert cos.min() >= min_cos and cos.mean() >= mean_cos, (cos.min(), cos.mean())


def mapped_rss_kib(path: str) -> int:
    """This process's resident KiB of the mappings of `path` (/proc/self/smaps)."""
    rss, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            if "-" in line.split(" ", 1)[0] and ":" not in line.split(" ", 1)[0]:
                inside = line.rstrip().endswith(path)
            elif inside and line.startswith("Rss:"):
                rss += int(line.split()[1])
    return rss


@pytest.mark.parametrize("quantization", ["", "q8_0"])
def test_file_pages_leave_the_resident_set(quantization: str) -> None:
    """Matrices the model copied (fused, converted, quantized) or prepacked are not read from
    the file again (batch-invariant linears read the packed copy), so their pages are dropped:
    only the resident copy counts. Before, a bf16 checkpoint was resident twice."""
    folder = tiny_llama("bfloat16", hidden_size=256, intermediate_size=512)
    path = str(Path(folder) / "model.safetensors")
    size_kib = Path(path).stat().st_size // 1024
    model = _core.load_model(folder, quantization=quantization)
    # Left: the header, norms, the partial pages at tensor edges and the embedding table (read
    # row by row later, not at load: 256 KiB of the ~2.3 MiB file).
    assert mapped_rss_kib(path) < 0.2 * size_kib, (mapped_rss_kib(path), size_kib)
    ids = [[1, 2, 3, 4, 5]]
    assert np.isfinite(model.forward_batch(ids)[0]).all()  # the released pages were not needed


def test_bad_quantization_values_are_refused(smollm_gguf: Path) -> None:
    from fastlm import LLM

    folder = tiny_llama("float32")
    with pytest.raises(ValueError, match="--quantization 'int3'"):
        _core.load_model(folder, quantization="int3")
    with pytest.raises(ValueError, match="--quantization gguf needs a .gguf"):
        _core.load_model(folder, quantization="gguf")
    with pytest.raises(ValueError, match="quantization must be one of"):
        LLM(folder, quantization="awq")


@pytest.mark.parametrize(("qtype", "tol"), [("q8_0", 0.01), ("q4_0", 0.2), ("q4_1", 0.2)])
def test_qlinear_rows_against_float_and_across_m(qtype: str, tol: float) -> None:
    """ops.qlinear on quantize_rows' blocks: close to the float matmul (the format's rounding),
    and each output row bit-identical whether it runs alone (the decode GEMV, whose four streams
    split N into quarters) or among others (the small-M tiles and the blocked ones), for N with
    and without a remainder and large enough for both threads."""
    rng = np.random.default_rng(7)
    for n in (3, 70, 2048):
        k = 192
        w = rng.standard_normal((n, k)).astype(np.float32)
        packed = _core.ops.quantize_rows(w, qtype)
        assert packed.dtype == np.uint8 and packed.shape[0] == n
        x = rng.standard_normal((9, k)).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32)
        ref = x @ w.T + bias
        y = _core.ops.qlinear(x, packed, qtype, bias)
        rel = np.linalg.norm(y - ref) / np.linalg.norm(ref)
        assert rel < tol, (qtype, n, rel)
        alone = np.concatenate(
            [_core.ops.qlinear(x[i : i + 1], packed, qtype, bias) for i in range(9)]
        )
        for m in (2, 3, 4, 9):
            np.testing.assert_array_equal(_core.ops.qlinear(x[:m], packed, qtype, bias), alone[:m])


def test_qlinear_refuses_bad_operands() -> None:
    w = np.zeros((4, 64), np.float32)
    with pytest.raises(ValueError, match="unknown quantized type 'q3_0'"):
        _core.ops.quantize_rows(w, "q3_0")
    with pytest.raises(ValueError, match="not a multiple"):
        _core.ops.quantize_rows(np.zeros((4, 48), np.float32), "q8_0")
    packed = _core.ops.quantize_rows(w, "q8_0")
    with pytest.raises(ValueError, match="does not hold rows of 32"):
        _core.ops.qlinear(np.zeros((1, 32), np.float32), packed, "q8_0")


def test_llm_quantizes_a_float_checkpoint_to_q4_1(tiny_model: Path) -> None:
    """--quantization q4_1 through the offline API: the weights are the q4_1 blocks (the size
    of _core's q4_1 load, above q4_0's: 20 bytes a block against 18) and greedy decoding
    follows the quantized model's own argmax."""
    from fastlm import LLM, SamplingParams

    core = _core.load_model(str(tiny_model), dtype="float32", quantization="q4_1")
    q4_0 = _core.load_model(str(tiny_model), dtype="float32", quantization="q4_0")
    assert core.weight_bytes > q4_0.weight_bytes
    llm = LLM(
        str(tiny_model),
        dtype="float32",
        quantization="q4_1",
        max_model_len=128,
        kv_cache_memory=16 << 20,
    )
    assert llm.engine.weight_bytes == core.weight_bytes
    prompt = [128000, 17, 42, 99]
    (out,) = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=1), use_tqdm=False)
    assert out.outputs[0].token_ids == [int(core.forward_batch([prompt])[0][-1].argmax())]
