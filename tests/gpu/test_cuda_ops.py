"""Every CUDA kernel against a torch reference on the GPU, per dtype, with per-dtype tolerances
(cuda/include/fastlm_cuda/*.h says what each computes)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from capi import Capi, Status, dt

DEV = "cuda"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
HALF = [torch.float16, torch.bfloat16]
# (atol, rtol) for outputs rounded to the dtype once (elementwise, norms).
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}
# Attention: P is rounded to the dtype before P V (as FlashAttention does).
ATTN_TOL = {torch.float32: (2e-5, 2e-5), torch.float16: (4e-3, 4e-3), torch.bfloat16: (3e-2, 3e-2)}


def close(out: torch.Tensor, ref: torch.Tensor, tol: tuple[float, float]) -> None:
    torch.testing.assert_close(out.float(), ref.float(), atol=tol[0], rtol=tol[1])


def randn(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, device=DEV, dtype=torch.float32).to(dtype)


def sync() -> None:
    torch.cuda.synchronize()


# ---------------------------------------------------------------- norms


def rms_ref(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w.float()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [64, 1000, 4096])
def test_rms_norm(capi: Capi, dtype: torch.dtype, hidden: int) -> None:
    rows, stride = 37, hidden + 24  # a strided input view
    base = randn(rows, stride, dtype=dtype)
    x = base[:, :hidden]
    w = randn(hidden, dtype=dtype)
    y = torch.empty(rows, hidden, device=DEV, dtype=dtype)
    capi("rms_norm", dt(dtype), x, stride, w, 1e-6, y, rows, hidden)
    sync()
    close(y, rms_ref(x, w, 1e-6).to(dtype), TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_rms_norm(capi: Capi, dtype: torch.dtype) -> None:
    rows, hidden = 19, 2048
    res = randn(rows, hidden, dtype=dtype)
    x = randn(rows, hidden, dtype=dtype)
    w = randn(hidden, dtype=dtype)
    y = torch.empty_like(x)
    res_ref = (res.float() + x.float()).to(dtype)
    capi("add_rms_norm", dt(dtype), res, x, w, 1e-5, y, rows, hidden)
    sync()
    torch.testing.assert_close(res, res_ref, atol=0, rtol=0)
    close(y, rms_ref(res_ref, w, 1e-5).to(dtype), TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_head_rms_norm_in_a_fused_qkv_row(capi: Capi, dtype: torch.dtype) -> None:
    rows, heads, hd, kv = 11, 8, 128, 2
    qkv = randn(rows, (heads + 2 * kv) * hd, dtype=dtype)
    w = randn(hd, dtype=dtype)
    before = qkv.clone()
    q = qkv[:, : heads * hd].reshape(rows, heads, hd)
    ref = rms_ref(q, w, 1e-6).to(dtype).reshape(rows, heads * hd)
    capi("head_rms_norm", dt(dtype), qkv, qkv.shape[1], heads, hd, w, 1e-6, rows)
    sync()
    close(qkv[:, : heads * hd], ref, TOL[dtype])
    torch.testing.assert_close(qkv[:, heads * hd :], before[:, heads * hd :], atol=0, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_residual", [False, True])
def test_layer_norm(capi: Capi, dtype: torch.dtype, with_residual: bool) -> None:
    rows, hidden = 23, 384
    x = randn(rows, hidden, dtype=dtype) * 3 + 1
    res = randn(rows, hidden, dtype=dtype) if with_residual else None
    w, b = randn(hidden, dtype=dtype), randn(hidden, dtype=dtype)
    y = torch.empty_like(x)
    capi("layer_norm", dt(dtype), x, res, w, b, 1e-12, y, rows, hidden)
    sync()
    inp = (x.float() + res.float()).to(dtype) if res is not None else x
    ref = F.layer_norm(inp.float(), (hidden,), w.float(), b.float(), 1e-12)
    close(y, ref.to(dtype), TOL[dtype])


# ---------------------------------------------------------------- rope + KV write


def cos_sin_table(rot: int, max_pos: int, base: float = 10000.0, scale: float = 1.0):
    inv_freq = 1.0 / (base ** (torch.arange(0, rot, 2, dtype=torch.float32, device=DEV) / rot))
    freqs = torch.outer(torch.arange(max_pos, dtype=torch.float32, device=DEV), inv_freq)
    return torch.cat([freqs.cos() * scale, freqs.sin() * scale], dim=-1).contiguous()


def rope_ref(x: torch.Tensor, cos_sin: torch.Tensor, pos: torch.Tensor, rot: int) -> torch.Tensor:
    half = rot // 2
    cos = cos_sin[pos.long(), :half][:, None, :]
    sin = cos_sin[pos.long(), half:][:, None, :]
    xf = x.float().clone()
    a, b = xf[..., :half].clone(), xf[..., half:rot].clone()
    xf[..., :half] = a * cos - b * sin
    xf[..., half:rot] = b * cos + a * sin
    return xf


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rot_frac", [1.0, 0.5])
def test_rope_write_kv(capi: Capi, dtype: torch.dtype, rot_frac: float) -> None:
    t, nq, nkv, hd, bs, blocks = 29, 8, 2, 128, 16, 12
    rot = int(hd * rot_frac)
    qkv = randn(t, (nq + 2 * nkv) * hd, dtype=dtype)
    stride = qkv.shape[1]
    q = qkv[:, : nq * hd]
    k = qkv[:, nq * hd : (nq + nkv) * hd]
    v = qkv[:, (nq + nkv) * hd :]
    pos = torch.randint(0, 4000, (t,), device=DEV, dtype=torch.int32)
    cs = cos_sin_table(rot, 4096, scale=1.1)  # yarn-style attention scaling folded in
    slots = torch.randperm(blocks * bs, device=DEV)[:t].to(torch.int64)
    slots[3] = -1  # a padding token: not written
    kc = torch.zeros(blocks, bs, nkv, hd, device=DEV, dtype=dtype)
    vc = torch.zeros_like(kc)
    q_ref = rope_ref(q.reshape(t, nq, hd), cs, pos, rot).to(dtype)
    k_ref = rope_ref(k.reshape(t, nkv, hd), cs, pos, rot).to(dtype)
    v_ref = v.reshape(t, nkv, hd).clone()
    capi(
        "rope_write_kv",
        dt(dtype),
        qkv,
        stride,
        nq,
        qkv[:, nq * hd :],
        stride,
        qkv[:, (nq + nkv) * hd :],
        stride,
        nkv,
        hd,
        rot,
        pos,
        cs,
        kc,
        vc,
        slots,
        t,
    )
    sync()
    close(q.reshape(t, nq, hd), q_ref, TOL[dtype])
    close(k.reshape(t, nkv, hd), k_ref, TOL[dtype])
    flat_k, flat_v = kc.reshape(-1, nkv, hd), vc.reshape(-1, nkv, hd)
    for i in range(t):
        s = int(slots[i])
        if s < 0:
            continue
        torch.testing.assert_close(flat_k[s], k.reshape(t, nkv, hd)[i], atol=0, rtol=0)
        torch.testing.assert_close(flat_v[s], v_ref[i], atol=0, rtol=0)
    written = {int(s) for s in slots if s >= 0}
    untouched = [s for s in range(blocks * bs) if s not in written]
    assert torch.count_nonzero(flat_k[untouched]) == 0


# ---------------------------------------------------------------- activations, gathers


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul(capi: Capi, dtype: torch.dtype) -> None:
    m, inter = 13, 1376
    gu = randn(m, 2 * inter, dtype=dtype) * 3
    out = torch.empty(m, inter, device=DEV, dtype=dtype)
    capi("silu_mul", dt(dtype), gu, out, m, inter)
    sync()
    ref = F.silu(gu[:, :inter].float()) * gu[:, inter:].float()
    close(out, ref.to(dtype), TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("approx", ["none", "tanh"])
def test_gelu(capi: Capi, dtype: torch.dtype, approx: str) -> None:
    x = randn(100003, dtype=dtype) * 4
    ref = F.gelu(x.float(), approximate=approx).to(dtype)
    capi("gelu", dt(dtype), x, x.numel(), int(approx == "tanh"))
    sync()
    close(x, ref, TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_bias(capi: Capi, dtype: torch.dtype) -> None:
    x, b = randn(17, 333, dtype=dtype), randn(333, dtype=dtype)
    ref = (x.float() + b.float()).to(dtype)
    capi("add_bias", dt(dtype), x, b, 17, 333)
    sync()
    close(x, ref, TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_and_gather_rows(capi: Capi, dtype: torch.dtype) -> None:
    vocab, hidden = 1000, 576
    table = randn(vocab, hidden, dtype=dtype)
    ids = torch.tensor([5, 999, 0, 5, -1, 1000, 42], device=DEV, dtype=torch.int32)
    out = torch.empty(len(ids), hidden, device=DEV, dtype=dtype)
    capi("embedding", dt(dtype), table, vocab, ids, out, len(ids), hidden)
    sync()
    valid = (ids >= 0) & (ids < vocab)
    torch.testing.assert_close(out[valid], table[ids[valid].long()], atol=0, rtol=0)
    assert torch.count_nonzero(out[~valid]) == 0
    rows = torch.tensor([6, 0, 3], device=DEV, dtype=torch.int32)
    g = torch.empty(3, hidden, device=DEV, dtype=dtype)
    capi("gather_rows", dt(dtype), out, hidden, rows, g, 3, hidden)
    sync()
    torch.testing.assert_close(g, out[rows.long()], atol=0, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", [0, 1, 2])  # last, mean, cls
@pytest.mark.parametrize("normalize", [False, True])
def test_pool(capi: Capi, dtype: torch.dtype, kind: int, normalize: bool) -> None:
    lens = [5, 1, 17, 9]
    qsl = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], device=DEV, dtype=torch.int32)
    h = randn(sum(lens), 384, dtype=dtype)
    out = torch.empty(len(lens), 384, device=DEV, dtype=torch.float32)
    capi("pool", dt(dtype), h, qsl, len(lens), 384, kind, int(normalize), out)
    sync()
    refs = []
    for s in range(len(lens)):
        rows = h[int(qsl[s]) : int(qsl[s + 1])].float()
        refs.append([rows[-1], rows.mean(0), rows[0]][kind])
    ref = torch.stack(refs)
    if normalize:
        ref = F.normalize(ref, dim=-1)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- attention


def build_paged(seqs, nkv, hd, bs, dtype):
    """Random K/V per sequence, scattered into a paged cache through shuffled block tables."""
    max_blocks = max(math.ceil(s / bs) for s, _ in seqs)
    total_blocks = sum(math.ceil(s / bs) for s, _ in seqs) + 3
    perm = torch.randperm(total_blocks, device=DEV).to(torch.int32)
    kc = randn(total_blocks, bs, nkv, hd, dtype=dtype)  # garbage where nothing is written
    vc = randn(total_blocks, bs, nkv, hd, dtype=dtype)
    tables = torch.zeros(len(seqs), max_blocks, device=DEV, dtype=torch.int32)
    ks, vs, used = [], [], 0
    for i, (s, _) in enumerate(seqs):
        nb = math.ceil(s / bs)
        tables[i, :nb] = perm[used : used + nb]
        used += nb
        k, v = randn(s, nkv, hd, dtype=dtype), randn(s, nkv, hd, dtype=dtype)
        j = torch.arange(s, device=DEV)
        kc[tables[i, j // bs].long(), j % bs] = k
        vc[tables[i, j // bs].long(), j % bs] = v
        ks.append(k)
        vs.append(v)
    return kc, vc, tables, ks, vs


def attention_ref(q, ks, vs, seqs, nq, nkv, scale, causal, window):
    outs, start = [], 0
    for (s, ql), k, v in zip(seqs, ks, vs, strict=True):
        qs = q[start : start + ql].float()  # [ql, nq, hd]
        kk = k.float().repeat_interleave(nq // nkv, dim=1)  # [s, nq, hd]
        vv = v.float().repeat_interleave(nq // nkv, dim=1)
        scores = torch.einsum("qhd,khd->hqk", qs, kk) * scale
        pos = torch.arange(s - ql, s, device=DEV)[:, None]
        key = torch.arange(s, device=DEV)[None, :]
        mask = torch.ones(ql, s, dtype=torch.bool, device=DEV)
        if causal:
            mask &= key <= pos
            if window > 0:
                mask &= key > pos - window
        scores = scores.masked_fill(~mask[None], float("-inf"))
        outs.append(torch.einsum("hqk,khd->qhd", scores.softmax(-1), vv))
        start += ql
    return torch.cat(outs)


def run_attention(
    capi, kernel, dtype, q, out, seqs, nq, nkv, hd, scale, causal, window, paged, num_splits=0
):
    qsl = torch.tensor(
        [0, *torch.tensor([ql for _, ql in seqs]).cumsum(0).tolist()], device=DEV, dtype=torch.int32
    )
    t = q.shape[0]
    common = dict(
        num_q_heads=nq,
        num_kv_heads=nkv,
        head_dim=hd,
        query_start_loc=qsl,
        max_query_len=max(ql for _, ql in seqs),
        max_seq_len=max(s for s, _ in seqs),
        scale=scale,
        causal=causal,
        sliding_window=window,
        workspace=capi.workspace(t, nq, hd, max(s for s, _ in seqs)),
        num_splits=num_splits,
    )
    if paged:
        kc, vc, tables, ks, vs = build_paged(seqs, nkv, hd, 16, dtype)
        seq_lens = torch.tensor([s for s, _ in seqs], device=DEV, dtype=torch.int32)
        capi.attention(
            dtype, kernel, q, out, seq_lens=seq_lens, k_cache=kc, v_cache=vc,
            block_tables=tables, block_size=16, **common,
        )  # fmt: skip
    else:
        k, v = randn(t, nkv * hd, dtype=dtype), randn(t, nkv * hd, dtype=dtype)
        ks = [k[int(qsl[i]) : int(qsl[i + 1])].reshape(-1, nkv, hd) for i in range(len(seqs))]
        vs = [v[int(qsl[i]) : int(qsl[i + 1])].reshape(-1, nkv, hd) for i in range(len(seqs))]
        capi.attention(dtype, kernel, q, out, k=k, v=v, **common)
    sync()
    return attention_ref(q.reshape(t, nq, hd), ks, vs, seqs, nq, nkv, scale, causal, window)


# (keys in the sequence, new query tokens): decode, long decode (split-KV), prefill, chunked.
MIXED = [(1, 1), (100, 100), (150, 70), (1500, 1), (33, 1), (64, 64)]
KERNELS = {"dispatch": 0, "split_kv": 1, "tiled": 2}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("hd", [32, 64, 128])
@pytest.mark.parametrize("window", [0, 40])
def test_paged_attention(capi: Capi, dtype, kernel: str, hd: int, window: int) -> None:
    if kernel == "tiled" and dtype == torch.float32:
        t = 4
        q = randn(t, 8 * hd)
        with pytest.raises(Status, match="unsupported"):
            run_attention(
                capi, 2, dtype, q, torch.empty_like(q), [(4, 4)], 8, 2, hd, 0.1, True, 0, True
            )
        return
    nq, nkv = 8, 2  # GQA 4:1
    t = sum(ql for _, ql in MIXED)
    q = randn(t, nq * hd, dtype=dtype)
    out = torch.full_like(q, float("nan"))
    ref = run_attention(
        capi,
        KERNELS[kernel],
        dtype,
        q,
        out,
        MIXED,
        nq,
        nkv,
        hd,
        1 / math.sqrt(hd),
        True,
        window,
        True,
    )
    close(out.reshape(t, nq, hd), ref, ATTN_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_split_kv_head_dim_256_and_mqa(capi: Capi, dtype: torch.dtype) -> None:
    seqs = [(700, 1), (2, 2), (300, 3)]
    t, nq, nkv, hd = 6, 4, 1, 256
    q = randn(t, nq * hd, dtype=dtype)
    out = torch.empty_like(q)
    ref = run_attention(capi, 1, dtype, q, out, seqs, nq, nkv, hd, 0.0625, True, 0, True)
    close(out.reshape(t, nq, hd), ref, ATTN_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", ["dispatch", "split_kv"])
def test_bidirectional_dense_attention(capi: Capi, dtype: torch.dtype, kernel: str) -> None:
    seqs = [(7, 7), (130, 130), (1, 1), (65, 65)]  # encoder batch: keys are the query rows
    t, nq, hd = sum(s for s, _ in seqs), 12, 32  # all-MiniLM-L6-v2's heads
    q = randn(t, nq * hd, dtype=dtype)
    out = torch.empty_like(q)
    ref = run_attention(
        capi, KERNELS[kernel], dtype, q, out, seqs, nq, nq, hd, 1 / math.sqrt(hd), False, 0, False
    )
    close(out.reshape(t, nq, hd), ref, ATTN_TOL[dtype])


def test_attention_rejects_bad_heads(capi: Capi) -> None:
    q = randn(1, 3 * 64)
    qsl = torch.tensor([0, 1], device=DEV, dtype=torch.int32)
    with pytest.raises(Status, match="invalid argument"):  # 3 query heads over 2 kv heads
        capi.attention(
            torch.float32, 1, q, q, num_q_heads=3, num_kv_heads=2, head_dim=64,
            query_start_loc=qsl, max_query_len=1, max_seq_len=1, scale=1.0, k=q[:, :128],
            v=q[:, :128],
        )  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES)
def test_split_kv_with_a_fixed_split_count(capi: Capi, dtype: torch.dtype) -> None:
    # What a captured CUDA graph does: the split count fixed whatever max_seq_len is.
    seqs = [(1000, 1), (3, 1), (257, 1)]
    t, nq, nkv, hd = 3, 8, 8, 128
    q = randn(t, nq * hd, dtype=dtype)
    for splits in (1, 3, 8):
        out = torch.empty_like(q)
        ref = run_attention(
            capi, 1, dtype, q, out, seqs, nq, nkv, hd, 0.088, True, 0, True, num_splits=splits
        )
        close(out.reshape(t, nq, hd), ref, ATTN_TOL[dtype])


# ---------------------------------------------------------------- sampling


def philox_ref(seed: int, offset: int) -> list[int]:
    """Philox4x32-10 (Random123), counter (offset lo, offset hi, 0, 0), key (seed lo, seed hi)."""
    m32 = 0xFFFFFFFF
    k0, k1 = seed & m32, seed >> 32
    c = [offset & m32, offset >> 32, 0, 0]
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k0, p1 & m32, (p0 >> 32) ^ c[3] ^ k1, p0 & m32]
        k0, k1 = (k0 + 0x9E3779B9) & m32, (k1 + 0xBB67AE85) & m32
    return c


def test_philox_matches_random123_and_host(capi: Capi) -> None:
    # Random123's known-answer vector for philox4x32_10, counter 0 and key 0.
    assert philox_ref(0, 0) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    pairs = [(0, 0), (1, 0), (1234, 7), (2**63 + 5, 2**40 + 3), (42, 1)]
    seeds = torch.tensor([s for s, _ in pairs], dtype=torch.uint64, device=DEV)
    offs = torch.tensor([o for _, o in pairs], dtype=torch.uint64, device=DEV)
    out = torch.empty(len(pairs), device=DEV)
    capi("philox_uniform", seeds, offs, len(pairs), out)
    sync()
    ref = [(philox_ref(s, o)[0] >> 8) / 2**24 for s, o in pairs]
    assert out.tolist() == pytest.approx(ref, abs=0)


def sample(
    capi, logits, temperature=None, top_k=None, top_p=None, min_p=None, seeds=None, offsets=None
):
    b, v = logits.shape

    def arr(x, dtype):
        return None if x is None else torch.tensor(x, device=DEV, dtype=dtype)

    out = torch.full((b,), -1, device=DEV, dtype=torch.int32)
    args = [
        arr(temperature, torch.float32),
        arr(top_k, torch.int32),
        arr(top_p, torch.float32),
        arr(min_p, torch.float32),
        arr(seeds, torch.uint64),
        arr(offsets, torch.uint64),
    ]
    capi("sample", logits, b, v, *args, out)
    sync()
    return out


def test_greedy_is_argmax_lowest_id_on_ties(capi: Capi) -> None:
    logits = randn(64, 151936) * 5
    logits[3, 100] = logits[3, 7] = 1000.0  # a tie: the lower id wins
    logits[5] = float("-inf")
    logits[5, 77] = 0.0
    out = sample(capi, logits, temperature=[0.0] * 64)
    ref = logits.argmax(-1).to(torch.int32)
    ref[3] = 7
    assert torch.equal(out, ref)
    # top_k = 1 at any temperature is greedy too (where the maximum is unique: tied maxima are all
    # kept, as vLLM's top-k keeps ties, and one of them is drawn).
    out = sample(
        capi,
        logits,
        temperature=[0.7] * 64,
        top_k=[1] * 64,
        seeds=list(range(64)),
        offsets=[0] * 64,
    )
    unique = torch.arange(64, device=DEV) != 3
    assert torch.equal(out[unique], ref[unique])
    assert int(out[3]) in (7, 100)


def filtered_probs(logits: torch.Tensor, t: float, k: int, p: float, min_p: float) -> torch.Tensor:
    """vLLM's order: temperature, min-p, top-k, top-p (over the renormalized survivors)."""
    probs = (logits.float() / t).softmax(-1)
    keep = probs >= min_p * probs.max() if min_p > 0 else torch.ones_like(probs, dtype=torch.bool)
    if 0 < k < logits.numel():
        keep &= probs >= probs.topk(k).values[-1]
    kept = torch.where(keep, probs, torch.zeros_like(probs))
    if p < 1:
        srt, idx = (kept / kept.sum()).sort(descending=True)
        cum = srt.cumsum(0)
        # the smallest prefix whose mass reaches p
        n = int((cum < p).sum()) + 1
        mask = torch.zeros_like(keep)
        mask[idx[:n]] = True
        keep &= mask
    kept = torch.where(keep, probs, torch.zeros_like(probs))
    return kept / kept.sum()


@pytest.mark.parametrize(
    ("t", "k", "p", "min_p"),
    [
        (1.0, 0, 1.0, 0.0),
        (0.7, 10, 1.0, 0.0),
        (1.3, 0, 0.8, 0.0),
        (1.0, 0, 1.0, 0.1),
        (0.9, 20, 0.9, 0.02),
    ],
)
def test_sampling_distribution(capi: Capi, t: float, k: int, p: float, min_p: float) -> None:
    v, n = 64, 16384
    row = randn(v) * 2
    logits = row.expand(n, v).contiguous()
    out = sample(
        capi,
        logits,
        temperature=[t] * n,
        top_k=[k] * n,
        top_p=[p] * n,
        min_p=[min_p] * n,
        seeds=list(range(n)),
        offsets=[3] * n,
    )
    expected = filtered_probs(row, t, k, p, min_p)
    counts = torch.bincount(out.long(), minlength=v).float() / n
    assert torch.all(counts[expected == 0] == 0), "a filtered token was sampled"
    sigma = (expected * (1 - expected) / n).sqrt()
    assert torch.all((counts - expected).abs() <= 5 * sigma + 1e-4)


def test_sampling_is_seeded_per_request(capi: Capi) -> None:
    logits = randn(8, 32000)
    kw = dict(temperature=[1.0] * 8, seeds=[11] * 8, offsets=[5] * 8)
    a = sample(capi, logits, **kw)
    b = sample(capi, logits, **kw)
    assert torch.equal(a, b)
    # The same request's draw does not depend on its row or on the other rows.
    shuffled = logits[[3, 0, 1, 2, 4, 5, 6, 7]].contiguous()
    c = sample(capi, shuffled, **kw)
    assert c[0] == a[3]
    # Another step (offset) draws again.
    draws = {
        int(sample(capi, logits[:1], temperature=[1.0], seeds=[11], offsets=[o])[0])
        for o in range(20)
    }
    assert len(draws) > 5


def test_penalties_bias_and_bitmask(capi: Capi) -> None:
    b, v = 3, 1000
    logits = randn(b, v) * 3
    ref = logits.clone()
    rows = [
        ([1, 2, 3], [0, 2, 1], [1, 0, 1]),  # (tokens, output counts, in prompt)
        ([], [], []),
        ([999, 0], [5, 0], [0, 1]),
    ]
    rep, freq, pres = [1.3, 2.0, 0.8], [0.5, 0.0, 0.25], [0.1, 0.0, 1.0]
    offsets, ids, counts, prompt = [0], [], [], []
    for r, (toks, cnt, pr) in enumerate(rows):
        ids += toks
        counts += cnt
        prompt += pr
        offsets.append(len(ids))
        for tok, c, pp in zip(toks, cnt, pr, strict=True):
            x = ref[r, tok]
            if c > 0 or pp:
                x = x / rep[r] if x > 0 else x * rep[r]
            ref[r, tok] = x - freq[r] * c - (pres[r] if c > 0 else 0.0)

    def t(x, dtype):
        return torch.tensor(x, device=DEV, dtype=dtype)

    capi(
        "apply_penalties",
        logits,
        b,
        v,
        t(rep, torch.float32),
        t(freq, torch.float32),
        t(pres, torch.float32),
        t(offsets, torch.int32),
        t(ids, torch.int32),
        t(counts, torch.int32),
        t(prompt, torch.uint8),
    )
    sync()
    torch.testing.assert_close(logits, ref, atol=1e-6, rtol=1e-6)

    bias_off, bias_ids, bias_val = [0, 1, 1, 3], [5, 7, 8], [10.0, -100.0, 0.5]
    capi(
        "apply_logit_bias",
        logits,
        b,
        v,
        t(bias_off, torch.int32),
        t(bias_ids, torch.int32),
        t(bias_val, torch.float32),
    )
    sync()
    ref[0, 5] += 10.0
    ref[2, 7] += -100.0
    ref[2, 8] += 0.5
    torch.testing.assert_close(logits, ref, atol=1e-6, rtol=1e-6)

    words = (v + 31) // 32
    allowed = torch.zeros(2, v, dtype=torch.bool)
    allowed[0, [3, 64, 999]] = True
    allowed[1] = True
    allowed[1, 500:600] = False
    bits = torch.zeros(2, words * 32, dtype=torch.int64)
    bits[:, :v] = allowed.long()
    packed = (bits.reshape(2, words, 32) << torch.arange(32)).sum(-1)
    packed = packed.where(packed < 2**31, packed - 2**32).to(torch.int32).to(DEV)
    capi("apply_token_bitmask", logits, b, v, packed, t([1, -1, 0], torch.int32))
    sync()
    ref[0, ~allowed[1].to(DEV)] = float("-inf")
    ref[2, ~allowed[0].to(DEV)] = float("-inf")
    torch.testing.assert_close(logits, ref, atol=1e-6, rtol=1e-6)


def test_logprobs(capi: Capi) -> None:
    b, v, n = 5, 50000, 20
    logits = randn(b, v) * 4
    tokens = torch.tensor([0, 17, 49999, 123, 4], device=DEV, dtype=torch.int32)
    lp = torch.empty(b, device=DEV)
    rank = torch.empty(b, device=DEV, dtype=torch.int32)
    top_ids = torch.empty(b, n, device=DEV, dtype=torch.int32)
    top_lp = torch.empty(b, n, device=DEV)
    capi("compute_logprobs", logits, b, v, tokens, n, lp, rank, top_ids, top_lp)
    sync()
    ref = logits.log_softmax(-1)
    tok_ref = ref.gather(1, tokens.long()[:, None])[:, 0]
    torch.testing.assert_close(lp, tok_ref, atol=1e-5, rtol=1e-5)
    rank_ref = (logits > logits.gather(1, tokens.long()[:, None])).sum(-1) + 1
    assert torch.equal(rank.long(), rank_ref)
    vals, idx = ref.topk(n, dim=-1)
    assert torch.equal(top_ids.long(), idx)
    torch.testing.assert_close(top_lp, vals, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- GEMM, allocator, memory


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 4096, 4096), (7, 1000, 576), (256, 14336, 4096)])
@pytest.mark.parametrize("epilogue", ["none", "bias", "gelu_bias"])
def test_gemm(capi: Capi, dtype, shape, epilogue: str) -> None:
    assert capi.lib.fl_has_gemm() == 1, "built without cuBLASLt"
    m, n, k = shape
    x, w = randn(m, k, dtype=dtype), randn(n, k, dtype=dtype) / math.sqrt(k)
    bias = randn(n, dtype=dtype) if epilogue != "none" else None
    y = torch.empty(m, n, device=DEV, dtype=dtype)
    before = capi.lib.fl_gemm_cached_algorithms()
    capi("gemm", dt(dtype), dt(dtype), x, w, bias, y, m, n, k, int(epilogue == "gelu_bias"))
    capi("gemm", dt(dtype), dt(dtype), x, w, bias, y, m, n, k, int(epilogue == "gelu_bias"))
    sync()
    assert capi.lib.fl_gemm_cached_algorithms() == before + 1  # chosen once per shape
    ref = x.double() @ w.double().T
    if bias is not None:
        ref += bias.double()
    if epilogue == "gelu_bias":
        ref = F.gelu(ref, approximate="tanh")
    tol = {torch.float32: (1e-4, 1e-4), torch.float16: (1e-2, 1e-2), torch.bfloat16: (6e-2, 3e-2)}
    close(y, ref.to(dtype), tol[dtype])


@pytest.mark.parametrize("dtype", HALF)
def test_gemm_with_f32_output_for_logits(capi: Capi, dtype: torch.dtype) -> None:
    m, n, k = 5, 32000, 2048  # an lm_head: f32 logits straight from f16/bf16 operands
    x, w = randn(m, k, dtype=dtype), randn(n, k, dtype=dtype) / math.sqrt(k)
    y = torch.empty(m, n, device=DEV, dtype=torch.float32)
    capi("gemm", dt(dtype), dt(torch.float32), x, w, None, y, m, n, k, 0)
    sync()
    torch.testing.assert_close(y, (x.double() @ w.double().T).float(), atol=2e-3, rtol=2e-3)


def test_caching_allocator_on_the_device(capi: Capi) -> None:
    import ctypes

    sizes = [1000, 300_000, 3 << 20, 12 << 20, 512, 40 << 20]
    arr = (ctypes.c_uint64 * len(sizes))(*sizes)
    out = (ctypes.c_int64 * 7)()
    assert capi.lib.fl_caching_allocator_roundtrip(arr, len(sizes), 10, out) == 0
    allocated, reserved, peak, allocs, hits, segments, retries = list(out)
    assert allocated == 0 and allocs == 60 and retries == 0
    assert hits >= 9 * len(sizes)  # every round after the first is served from the cache
    assert segments <= len(sizes)
    assert peak >= sum(sizes) and reserved >= peak


def test_device_memory_info(capi: Capi) -> None:
    import ctypes

    free, total = ctypes.c_uint64(), ctypes.c_uint64()
    assert capi.lib.fl_device_memory_info(ctypes.byref(free), ctypes.byref(total)) == 0
    f, t = torch.cuda.mem_get_info()
    assert total.value == t and 0 < free.value <= total.value
