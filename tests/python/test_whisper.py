"""Whisper: log-mel features, the C++ encoder-decoder against transformers (tiny random
checkpoint and the real tiny.en in CTranslate2 format), and greedy decoding through the engine
with Whisper's suppress-token rules."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastlm import _core, audio
from tiny_models import tiny_whisper
from whisper_data import hf_greedy, speak, tiny_en_dir

SENTENCE = "The quick brown fox jumps over the lazy dog. She sells sea shells by the sea shore."


@pytest.fixture(scope="module")
def ct2_dir() -> Path:
    return tiny_en_dir()


@pytest.fixture(scope="module")
def ct2_tokens(ct2_dir: Path) -> dict[str, Any]:
    return json.loads((ct2_dir / "config.json").read_text())


# -- features ----------------------------------------------------------------------------------
@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_transformers(n_mels: int) -> None:
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=n_mels)
    rng = np.random.default_rng(n_mels)
    clips = [
        (rng.standard_normal(16000 * 3) * 0.1).astype(np.float32),
        (np.sin(np.arange(audio.N_SAMPLES) * 0.05) * 0.3).astype(np.float32),  # a full window
        np.zeros(400, dtype=np.float32) + 0.01,
    ]
    for clip in clips:
        want = fe(clip, sampling_rate=16000, return_tensors="np").input_features[0]
        got = audio.log_mel(clip[None], n_mels)[0]
        assert got.shape == (n_mels, audio.N_FRAMES)
        np.testing.assert_allclose(got, want, atol=5e-5, rtol=0)
    np.testing.assert_allclose(audio.mel_filters(n_mels), fe.mel_filters, atol=1e-7)


def test_split_audio_cuts_in_pauses() -> None:
    rate = audio.SAMPLE_RATE
    rng = np.random.default_rng(0)
    # 70 s of noise with a 0.4 s silence at 27 s and at 55 s: the cuts land in them.
    samples = (rng.standard_normal(70 * rate) * 0.2).astype(np.float32)
    for pause in (27.0, 55.0):
        samples[int(pause * rate) : int((pause + 0.4) * rate)] = 0.0
    chunks = audio.split_audio(samples)
    assert len(chunks) == 3
    assert sum(c.samples.shape[0] for c in chunks) == samples.shape[0]
    for c, pause in zip(chunks[1:], (27.0, 55.0), strict=True):
        assert pause <= c.offset_seconds <= pause + 0.4
    assert all(c.samples.shape[0] <= audio.N_SAMPLES for c in chunks)


# -- the cross-attention op --------------------------------------------------------------------
@pytest.mark.parametrize(("cache_dtype", "d"), [("float32", 64), ("bfloat16", 64), ("float32", 24)])
def test_cross_attention_op(cache_dtype: str, d: int) -> None:
    """ops::cross_attention against numpy: rows with their own shuffled blocks, num_keys neither a
    multiple of the block size nor of 4 (and over several 128-key chunks), the AVX2 body (d 64)
    and the portable one (d 24); each row's result is the same alone as in the batch."""
    import torch

    rng = np.random.default_rng(d)
    heads, bs, num_keys, rows = 3, 7, 299, 5
    per_row = -(-num_keys // bs)
    num_blocks = rows * per_row + 3
    k = rng.standard_normal((num_blocks, bs, heads, d)).astype(np.float32)
    v = rng.standard_normal((num_blocks, bs, heads, d)).astype(np.float32)
    if cache_dtype == "bfloat16":
        to_bits = lambda a: torch.from_numpy(a).bfloat16().view(torch.int16).numpy().view(np.uint16)  # noqa: E731
        kc, vc = to_bits(k), to_bits(v)
        k = torch.from_numpy(k).bfloat16().float().numpy()
        v = torch.from_numpy(v).bfloat16().float().numpy()
    else:
        kc, vc = k, v
    tables = rng.permutation(num_blocks)[: rows * per_row].reshape(rows, per_row).astype(np.int32)
    q = rng.standard_normal((rows, heads * d)).astype(np.float32)
    scale = d**-0.5
    got = _core.cross_attention(q, kc, vc, cache_dtype, tables, num_keys, heads, d, scale)
    for r in range(rows):
        keys = k[tables[r]].reshape(-1, heads, d)[:num_keys]  # [num_keys, H, D]
        vals = v[tables[r]].reshape(-1, heads, d)[:num_keys]
        qr = q[r].reshape(heads, d)
        scores = np.einsum("hd,jhd->hj", qr.astype(np.float64), keys) * scale
        p = np.exp(scores - scores.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        want = np.einsum("hj,jhd->hd", p, vals).reshape(-1)
        np.testing.assert_allclose(got[r], want, atol=2e-5, rtol=1e-5)
        alone = _core.cross_attention(
            q[r : r + 1], kc, vc, cache_dtype, tables[r : r + 1], num_keys, heads, d, scale
        )
        np.testing.assert_array_equal(alone[0], got[r])


# -- tiny random checkpoint vs transformers ----------------------------------------------------
def _features(n: int, n_mels: int = 80, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    clips = (rng.standard_normal((n, 16000 * 4)) * 0.1).astype(np.float32)
    return audio.log_mel(clips, n_mels)


@pytest.mark.parametrize(("dtype", "atol"), [("float32", 2e-4), ("bfloat16", 0.15)])
def test_tiny_whisper_logits(ct2_dir: Path, dtype: str, atol: float) -> None:
    import torch
    import transformers

    folder = tiny_whisper(str(ct2_dir), dtype)
    feats = _features(2)
    tokens = [[50257, 50362, 464, 2068, 7586], [50257, 50362, 40, 1842]]
    ref = transformers.WhisperForConditionalGeneration.from_pretrained(folder).eval()
    model = _core.load_model(folder, dtype)
    with torch.no_grad():
        enc = ref.model.encoder(torch.from_numpy(feats).to(ref.dtype)).last_hidden_state
        want_logits = [
            ref(
                input_features=torch.from_numpy(feats[i : i + 1]).to(ref.dtype),
                decoder_input_ids=torch.tensor([t]),
            )
            .logits[0]
            .float()
            .numpy()
            for i, t in enumerate(tokens)
        ]
    got_enc = _core.whisper_encode(model, feats).reshape(enc.shape)
    np.testing.assert_allclose(got_enc, enc.float().numpy(), atol=atol * 5, rtol=0)
    got = _core.encoder_decoder_logits(model, feats, tokens)
    np.testing.assert_allclose(got, np.concatenate(want_logits), atol=atol, rtol=0)
    # Block size does not change the result (the encoder's slots are whole blocks).
    np.testing.assert_allclose(
        _core.encoder_decoder_logits(model, feats, tokens, block_size=7), got, atol=1e-5, rtol=0
    )


def _engine(model: str, **kw: Any) -> Any:
    cfg = _core.EngineConfig()
    cfg.model = model
    cfg.dtype = kw.pop("dtype", "float32")
    cfg.kv_cache_memory = kw.pop("kv_cache_memory", 256 * 2**20)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return _core.Engine(cfg)


def _run(engine: Any, requests: dict[str, tuple[np.ndarray, list[int], Any]]) -> dict:
    for rid, (feats, prompt, params) in requests.items():
        engine.add_encoder_decoder_request(rid, feats, prompt, params)
    out: dict[str, list[int]] = {rid: [] for rid in requests}
    while engine.has_unfinished():
        for d in engine.step():
            out[d.request_id] += list(d.new_token_ids)
    return out


def _greedy_params(ct2_tokens: dict[str, Any], max_tokens: int, ignore_eos: bool) -> Any:
    p = _core.SamplingParams()
    p.temperature = 0.0
    p.max_tokens = max_tokens
    p.ignore_eos = ignore_eos
    p.bad_words = [[t] for t in ct2_tokens["suppress_ids"]]
    p.begin_suppress_tokens = list(ct2_tokens["suppress_ids_begin"])
    return p


@pytest.mark.parametrize("timestamps", [False, True])
def test_tiny_whisper_greedy_32_steps(
    ct2_dir: Path, ct2_tokens: dict[str, Any], timestamps: bool
) -> None:
    """Greedy tokens == transformers for 32 steps; with timestamps, under Whisper's timestamp
    rules (== transformers' WhisperTimeStampLogitsProcessor)."""
    import transformers

    folder = tiny_whisper(str(ct2_dir), "float32")
    ref = transformers.WhisperForConditionalGeneration.from_pretrained(folder).eval()
    n = 2 if timestamps else 3
    feats = _features(n, seed=1)
    prompt = [50257] if timestamps else [50257, 50362]
    rules = (ct2_tokens["suppress_ids"], ct2_tokens["suppress_ids_begin"])
    params = _greedy_params(ct2_tokens, 32, ignore_eos=True)
    if timestamps:
        params.timestamp_begin = 50363
    engine = _engine(folder, block_size=16)
    got = _run(engine, {f"r{i}": (feats[i], prompt, params) for i in range(n)})
    for i in range(n):
        want = hf_greedy(ref, feats[i], prompt, 32, rules, False, timestamps)
        assert got[f"r{i}"] == want, i
    if timestamps:  # the rules were at work: timestamps came out, in pairs after the first
        stamps = [t for ids in got.values() for t in ids if t >= 50363]
        assert stamps, got
    assert engine.stats().num_free_blocks == engine.num_blocks


def test_engine_refuses_bad_audio_requests(ct2_dir: Path) -> None:
    with pytest.raises(ValueError, match="quantization q8_0 is not supported"):
        _engine(str(ct2_dir), quantization="q8_0")
    engine = _engine(str(ct2_dir), kv_cache_memory=64 * 2**20)
    p = _core.SamplingParams()
    with pytest.raises(ValueError, match="encoder input holds"):
        engine.add_encoder_decoder_request("a", np.zeros((80, 10), np.float32), [50257], p)
    with pytest.raises(ValueError, match="decoder prompt is empty"):
        engine.add_encoder_decoder_request("b", np.zeros((80, 3000), np.float32), [], p)
    with pytest.raises(ValueError, match="audio requests only"):
        engine.add_request("c", [50257], p)
    p.prompt_logprobs = 1
    with pytest.raises(ValueError, match="prompt_logprobs"):
        engine.add_encoder_decoder_request("d", np.zeros((80, 3000), np.float32), [50257], p)


# -- the real tiny.en (CTranslate2) vs transformers on the same weights -------------------------
def _read_ct2(path: Path) -> dict[str, np.ndarray]:
    """Our own reader of CTranslate2's model.bin (float variables only)."""
    data = path.read_bytes()
    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        v = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return v[0]

    def string() -> str:
        nonlocal pos
        n = take("<H")
        s = data[pos : pos + n - 1].decode()
        pos += n
        return s

    take("<I")
    string()
    take("<I")
    out: dict[str, np.ndarray] = {}
    dtypes = {0: np.float32, 4: np.float16}
    for _ in range(take("<I")):
        name = string()
        shape = [take("<I") for _ in range(take("<B"))]
        dtype = take("<B")
        nbytes = take("<I")
        if dtype in dtypes:
            count = nbytes // np.dtype(dtypes[dtype]).itemsize
            out[name] = np.frombuffer(data, dtypes[dtype], count, pos).reshape(shape)
        pos += nbytes
    return out


def ct2_to_transformers(ct2: Path, out: Path) -> Path:
    """A WhisperForConditionalGeneration folder holding the CTranslate2 model's weights."""
    import torch
    import transformers

    v = _read_ct2(ct2 / "model.bin")
    d = v["encoder/conv1/weight"].shape[0]
    n_enc = sum(1 for k in v if k.startswith("encoder/layer_") and k.endswith("ffn/linear_0/bias"))
    n_dec = sum(1 for k in v if k.startswith("decoder/layer_") and k.endswith("ffn/linear_0/bias"))
    cfg = transformers.WhisperConfig(
        vocab_size=v["decoder/embeddings/weight"].shape[0],
        num_mel_bins=v["encoder/conv1/weight"].shape[1],
        d_model=d,
        encoder_layers=n_enc,
        decoder_layers=n_dec,
        encoder_attention_heads=d // 64,
        decoder_attention_heads=d // 64,
        encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_start_token_id=50257,
        eos_token_id=50256,
        pad_token_id=50256,
        bos_token_id=50256,
    )
    sd: dict[str, np.ndarray] = {}

    def ln(hf: str, c: str) -> None:
        sd[hf + ".weight"], sd[hf + ".bias"] = v[c + "/gamma"], v[c + "/beta"]

    def lin(hf: str, c: str, bias: bool = True) -> None:
        sd[hf + ".weight"] = v[c + "/weight"]
        if bias:
            sd[hf + ".bias"] = v[c + "/bias"]

    def attn(hf: str, c: str) -> None:
        w, b = v[c + "/linear_0/weight"], v[c + "/linear_0/bias"]
        for i, p in enumerate("qkv"):
            sd[f"{hf}.{p}_proj.weight"] = w[i * d : (i + 1) * d]
            if p != "k":
                sd[f"{hf}.{p}_proj.bias"] = b[i * d : (i + 1) * d]
        lin(hf + ".out_proj", c + "/linear_1")

    for side, n in (("encoder", n_enc), ("decoder", n_dec)):
        for i in range(n):
            hf, c = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            ln(hf + ".self_attn_layer_norm", c + "/self_attention/layer_norm")
            attn(hf + ".self_attn", c + "/self_attention")
            ln(hf + ".final_layer_norm", c + "/ffn/layer_norm")
            lin(hf + ".fc1", c + "/ffn/linear_0")
            lin(hf + ".fc2", c + "/ffn/linear_1")
            if side == "decoder":
                ln(hf + ".encoder_attn_layer_norm", c + "/attention/layer_norm")
                lin(hf + ".encoder_attn.q_proj", c + "/attention/linear_0")
                kv, kv_b = v[c + "/attention/linear_1/weight"], v[c + "/attention/linear_1/bias"]
                assert not kv_b[:d].any()  # HF's k_proj has no bias
                sd[hf + ".encoder_attn.k_proj.weight"] = kv[:d]
                sd[hf + ".encoder_attn.v_proj.weight"] = kv[d:]
                sd[hf + ".encoder_attn.v_proj.bias"] = kv_b[d:]
                lin(hf + ".encoder_attn.out_proj", c + "/attention/linear_2")
        ln(f"model.{side}.layer_norm", f"{side}/layer_norm")
    for conv in ("conv1", "conv2"):
        lin(f"model.encoder.{conv}", f"encoder/{conv}")
    sd["model.encoder.embed_positions.weight"] = v["encoder/position_encodings/encodings"]
    sd["model.decoder.embed_positions.weight"] = v["decoder/position_encodings/encodings"]
    sd["model.decoder.embed_tokens.weight"] = v["decoder/embeddings/weight"]
    model = transformers.WhisperForConditionalGeneration(cfg)
    tensors = {k: torch.from_numpy(a.astype(np.float32)) for k, a in sd.items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    assert not unexpected and set(missing) <= {"proj_out.weight"}, (missing, unexpected)
    model.tie_weights()
    model.save_pretrained(out)
    return out


@pytest.mark.slow
def test_tiny_en_transcribes_like_transformers(
    ct2_dir: Path, ct2_tokens: dict[str, Any], tmp_path: Path
) -> None:
    import transformers

    ref = transformers.WhisperForConditionalGeneration.from_pretrained(
        ct2_to_transformers(ct2_dir, tmp_path / "hf")
    ).eval()
    clips = [speak(SENTENCE), speak("Hello world, this is a test of speech recognition.")]
    feats = audio.log_mel(np.stack([np.pad(c, (0, 16000 * 8 - len(c))) for c in clips]), 80)
    prompt = [50257, 50362]
    engine = _engine(str(ct2_dir))
    params = _greedy_params(ct2_tokens, 100, ignore_eos=False)
    got = _run(engine, {f"c{i}": (feats[i], prompt, params) for i in range(len(clips))})
    rules = (ct2_tokens["suppress_ids"], ct2_tokens["suppress_ids_begin"])
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(ct2_dir / "tokenizer.json"))
    for i in range(len(clips)):
        want = hf_greedy(ref, feats[i], prompt, 100, rules, True)
        ids = [t for t in got[f"c{i}"] if t != 50256]
        assert ids == want, (tok.decode(ids), tok.decode(want))
    # espeak-ng's voice is hard on tiny.en ("the quick roundfark stump over the lazy nog"), but
    # the words it gets are there.
    text = tok.decode([t for t in got["c0"] if t < 50256]).lower()
    assert "quick" in text and "lazy" in text and "sea shore" in text, text


# -- decoder prompts of a multilingual checkpoint ----------------------------------------------
def test_multilingual_tokens_and_forced_language(ct2_dir: Path, tmp_path: Path) -> None:
    """large-v3's layout read off a Hugging Face folder: 100 languages, the task tokens, the
    suppress lists of generation_config.json; a language by code, name or in capitals; the
    language `forced_decoder_ids` force is the default, none means detect; English-only
    tiny.en takes only English and cannot translate."""
    import shutil

    from fastlm.model_files import resolve_model
    from fastlm.tokenizer import load_tokenizer
    from fastlm.whisper import WhisperRequestError, whisper_tokens

    folder = Path(tiny_whisper(str(ct2_dir), "float32", 128, multilingual=True))
    gen = json.loads((folder / "generation_config.json").read_text())

    def tokens_of(path: Path) -> Any:
        files = resolve_model(str(path))
        vocab = json.loads((path / "config.json").read_text()).get("vocab_size", 51864)
        return whisper_tokens(files, load_tokenizer(files), vocab)

    ml = tokens_of(folder)
    assert ml.multilingual and len(ml.languages) == 100 and ml.languages["yue"] == 50358
    assert (ml.sot, ml.eot, ml.translate, ml.transcribe) == (50258, 50257, 50359, 50360)
    assert (ml.no_timestamps, ml.timestamp_begin) == (50364, 50365)
    assert ml.suppress_tokens == gen["suppress_tokens"] and ml.forced_language is None
    assert ml.language_token_ids == list(range(50259, 50359))
    assert ml.resolve_language(None) is None  # detect
    assert {ml.resolve_language(x) for x in ("fr", "FR", "French", " french ")} == {"fr"}
    assert ml.decoder_prompt("fr", "translate") == [50258, 50265, 50359, 50364]
    assert ml.decoder_prompt("de", "transcribe", [11, 12], timestamps=True) == [
        50362, 11, 12, 50258, 50261, 50360]  # fmt: skip
    with pytest.raises(WhisperRequestError) as e:
        ml.resolve_language("xx")
    assert e.value.param == "language"
    forced = tmp_path / "forced"  # the folder's JSON files (whisper_tokens reads no weights)
    forced.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(folder / name, forced / name)
    gen["forced_decoder_ids"] = [[1, 50265], [2, 50360], [3, 50364]]  # a French fine-tune
    (forced / "generation_config.json").write_text(json.dumps(gen))
    assert tokens_of(forced).resolve_language(None) == "fr"
    en = tokens_of(ct2_dir)
    assert not en.multilingual and en.resolve_language(None) == "en"
    assert en.decoder_prompt(None, "transcribe") == [50257, 50362]
    for bad, param in ((("fr", "transcribe"), "language"), ((None, "translate"), "model")):
        with pytest.raises(WhisperRequestError) as e:
            en.decoder_prompt(*bad)
        assert e.value.param == param
