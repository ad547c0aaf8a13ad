"""fastlm._core.ops kernels against torch references, per ISA path and weight/cache dtype.

Tolerances (max abs error, relative to the reference's scale):
  float32 weights/caches: ~1e-5; bfloat16: inputs are rounded to bf16 in the reference too, so
  only accumulation order differs (~1e-5 of the sum of |products|), except paged attention with
  bf16 caches which compares against the bf16 cache contents (same 2e-5).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastlm import _core

ops = _core.ops

ISAS = ["avx512bf16", "avx512", "avx2", "scalar"]
_LEVEL = {name: i for i, name in enumerate(reversed(ISAS))}


# Only the paths this CPU can run: a path it lacks is not a skipped test.
HOST_ISAS = [name for name in ISAS if _LEVEL[name] <= _LEVEL[ops.detected_isa()]]
# Every op test body runs on each device this build and machine have (a CUDA build adds "cuda"
# here and its kernels join these tests with no new test code), as llama.cpp's test-backend-ops.
DEVICES = _core.devices()
# Tests of ISA-specific CPU code run once per CPU path, then once per other device.
TARGETS = [f"cpu/{name}" for name in HOST_ISAS] + [d for d in DEVICES if d != "cpu"]


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(params=TARGETS)
def target(request: pytest.FixtureRequest) -> Iterator[str]:
    """The device to run on; on the CPU, with the instruction-set path of the param selected."""
    name, _, isa = str(request.param).partition("/")
    previous = ops.isa()
    if isa:
        ops.set_isa(isa)
    yield name
    ops.set_isa(previous)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def as_dtype(t: torch.Tensor, dtype: str) -> np.ndarray:
    """The array the binding takes for `dtype`: float32 values, or uint16 bits."""
    if dtype == "float32":
        return t.float().numpy()
    torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float16
    return t.to(torch_dtype).view(torch.int16).numpy().view(np.uint16)


def rounded(t: torch.Tensor, dtype: str) -> torch.Tensor:
    """t as the kernel sees it after storage in `dtype`, in float64."""
    if dtype == "float32":
        return t.float().double()
    return t.to(torch.bfloat16 if dtype == "bfloat16" else torch.float16).double()


# ---------------------------------------------------------------- linear


LINEAR_SHAPES = [(37, 19), (130, 200), (64, 576), (1, 33)]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 8, 9, 33])
def test_linear(target: str, dtype: str, m: int) -> None:
    g = gen(m)
    for n, k in LINEAR_SHAPES:
        for with_bias in (False, True):
            x = torch.randn(m, k, generator=g)
            w = torch.randn(n, k, generator=g)
            b = torch.randn(n, generator=g) if with_bias else None
            y = ops.linear(
                x.numpy(),
                as_dtype(w, dtype),
                dtype,
                None if b is None else b.numpy(),
                device=target,
            )
            xr = x.double() if dtype == "float32" else x.bfloat16().double()
            ref = F.linear(xr, rounded(w, dtype), None if b is None else b.double())
            scale = (xr.abs() @ rounded(w, dtype).abs().T).numpy() + 1.0
            err = np.abs(y - ref.numpy()) / scale
            assert err.max() < 1e-5, (m, n, k, with_bias, err.max())


def from_bits(a: np.ndarray, dtype: str) -> np.ndarray:
    """A kernel output (float32 values or bfloat16 bits) as float64 values."""
    if dtype == "float32":
        return a.astype(np.float64)
    return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16).double().numpy()


@pytest.mark.parametrize("w_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("io", ["float32>float32", "float32>bfloat16", "bfloat16>float32"])
@pytest.mark.parametrize("act", ["none", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("m", [3, 40])
def test_linear_act(target: str, w_dtype: str, io: str, act: str, m: int) -> None:
    """y = act(x @ w^T + b) with bf16 inputs/outputs: fused into the oneDNN matmul (m = 40 at
    avx512bf16, or float32 weights) or composed (GEMV rows, lower ISAs)."""
    x_dtype, y_dtype = io.split(">")
    g = gen(m + len(act))
    n, k = 70, 96
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g) / 4
    b = torch.randn(n, generator=g)
    y = ops.linear_act(
        as_dtype(x, x_dtype),
        x_dtype,
        as_dtype(w, w_dtype),
        w_dtype,
        b.numpy(),
        act,
        y_dtype,
        device=target,
    )
    assert y.dtype == (np.float32 if y_dtype == "float32" else np.uint16)
    bf16_math = "bfloat16" in (x_dtype, w_dtype)
    xr = x.bfloat16().double() if bf16_math else x.double()
    pre = F.linear(xr, rounded(w, w_dtype), b.double())
    ref = {"none": pre, "gelu": F.gelu(pre), "gelu_tanh": F.gelu(pre, approximate="tanh")}[act]
    scale = (xr.abs() @ rounded(w, w_dtype).abs().T).numpy() + 1.0
    err = np.abs(from_bits(y, y_dtype) - ref.numpy())
    # bf16 outputs: one rounding of the result (2^-8 relative) on top of accumulation order.
    bound = 2e-5 * scale + (np.abs(ref.numpy()) * 2.0**-8 if y_dtype == "bfloat16" else 0.0)
    assert (err <= bound).all(), (err / bound).max()


def test_linear_act_rejects_bad_arguments() -> None:
    x = np.zeros((4, 8), np.float32)
    w = np.zeros((5, 8), np.float32)
    with pytest.raises(ValueError, match="act must be"):
        ops.linear_act(x, "float32", w, "float32", None, "relu6", "float32")
    with pytest.raises(ValueError, match="disagree"):
        ops.linear_act(
            x, "float32", np.zeros((5, 7), np.float32), "float32", None, "gelu", "float32"
        )


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("gemv_rows", [0, 8])
def test_linear_gemv_threshold(target: str, dtype: str, gemv_rows: int) -> None:
    """Both routes (canonical GEMM, oneDNN) for the same M, incl. the threaded split of N: the
    crossover only exists with batch invariance off."""
    ops.set_gemv_max_rows(gemv_rows)
    ops.set_batch_invariant(False)
    try:
        g = gen(7)
        for m in (1, 4, 7):
            x = torch.randn(m, 300, generator=g)
            w = torch.randn(1000, 300, generator=g)
            b = torch.randn(1000, generator=g)
            y = ops.linear(x.numpy(), as_dtype(w, dtype), dtype, b.numpy(), device=target)
            xr = x.double() if dtype == "float32" else x.bfloat16().double()
            ref = F.linear(xr, rounded(w, dtype), b.double()).numpy()
            np.testing.assert_allclose(y, ref, rtol=0, atol=2e-4)
    finally:
        ops.set_gemv_max_rows(-1)
        ops.set_batch_invariant(True)


def test_linear_rejects_bad_shapes() -> None:
    x = np.zeros((2, 8), np.float32)
    with pytest.raises(ValueError, match="in_features"):
        ops.linear(x, np.zeros((4, 9), np.float32))
    with pytest.raises(ValueError, match="bias"):
        ops.linear(x, np.zeros((4, 8), np.float32), "float32", np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        ops.linear(x, np.zeros((4, 8), np.uint16), "float16")


def test_isa_selection() -> None:
    assert ops.isa() in ISAS
    with pytest.raises(ValueError):
        ops.set_isa("sse9")


# ---------------------------------------------------------------- norms, bias, activation


def rms_ref(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


WDTYPES = ["float32", "bfloat16", "float16"]


@pytest.mark.parametrize("dtype", WDTYPES)
def test_rms_norm(device: str, dtype: str) -> None:
    g = gen(1)
    for m, h in [(1, 576), (7, 100), (64, 1000)]:
        x = torch.randn(m, h, generator=g) * 3
        w = torch.randn(h, generator=g)
        y = ops.rms_norm(x.numpy(), as_dtype(w, dtype), dtype, 1e-5, device=device)
        np.testing.assert_allclose(
            y, rms_ref(x, rounded(w, dtype), 1e-5).numpy(), atol=2e-5, rtol=1e-5
        )


@pytest.mark.parametrize("dtype", WDTYPES)
def test_add_rms_norm(device: str, dtype: str) -> None:
    g = gen(2)
    for m, h in [(1, 576), (33, 130)]:
        res = torch.randn(m, h, generator=g)
        x = torch.randn(m, h, generator=g)
        w = torch.randn(h, generator=g)
        res_np = res.numpy().copy()
        y = ops.add_rms_norm(res_np, x.numpy(), as_dtype(w, dtype), dtype, 1e-6, device=device)
        total = res + x
        np.testing.assert_array_equal(res_np, total.numpy())
        np.testing.assert_allclose(
            y, rms_ref(total, rounded(w, dtype), 1e-6).numpy(), atol=2e-5, rtol=1e-5
        )


@pytest.mark.parametrize("dtype", WDTYPES)
def test_head_rms_norm(device: str, dtype: str) -> None:
    g = gen(3)
    t, heads, d = 5, 4, 64
    x = torch.randn(t, heads * d, generator=g)
    w = torch.randn(d, generator=g)
    x_np = x.numpy().copy()
    ops.head_rms_norm(x_np, as_dtype(w, dtype), dtype, d, 1e-6, device=device)
    ref = rms_ref(x.view(t, heads, d), rounded(w, dtype), 1e-6).reshape(t, heads * d)
    np.testing.assert_allclose(x_np, ref.numpy(), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", WDTYPES)
def test_add_bias(device: str, dtype: str) -> None:
    g = gen(4)
    x = torch.randn(9, 70, generator=g)
    b = torch.randn(70, generator=g)
    x_np = x.numpy().copy()
    ops.add_bias(x_np, as_dtype(b, dtype), dtype, device=device)
    np.testing.assert_allclose(x_np, (x.double() + rounded(b, dtype)).numpy(), atol=1e-6)


def test_silu_mul(target: str) -> None:
    g = gen(5)
    # Widths around the 8/16-lane bodies and their tails; large |x| exercises exp's clamp.
    for m, i in [(1, 1536), (17, 33), (3, 7), (2, 16), (5, 23)]:
        gate_up = torch.randn(m, 2 * i, generator=g) * 6
        gate_up[0, :2] = torch.tensor([100.0, -100.0])
        out = ops.silu_mul(gate_up.numpy(), device=target)
        ref = F.silu(gate_up[:, :i].double()) * gate_up[:, i:].double()
        np.testing.assert_allclose(out, ref.numpy(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", WDTYPES)
def test_layer_norm(target: str, dtype: str) -> None:
    g = gen(11)
    # BERT/MiniLM widths and odd ones; an offset mean and a large scale test the variance.
    for m, h in [(1, 384), (7, 768), (3, 33), (16, 1)]:
        x = torch.randn(m, h, generator=g) * 4 + 10
        w = torch.randn(h, generator=g)
        b = torch.randn(h, generator=g)
        y = ops.layer_norm(
            x.numpy(), as_dtype(w, dtype), as_dtype(b, dtype), dtype, 1e-12, device=target
        )
        ref = F.layer_norm(x.double(), (h,), rounded(w, dtype), rounded(b, dtype), 1e-12)
        np.testing.assert_allclose(y, ref.numpy(), atol=3e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", WDTYPES)
def test_add_layer_norm(target: str, dtype: str) -> None:
    g = gen(12)
    for m, h in [(5, 384), (2, 70)]:
        res = torch.randn(m, h, generator=g)
        x = torch.randn(m, h, generator=g)
        w = torch.randn(h, generator=g)
        b = torch.randn(h, generator=g)
        res_np = res.numpy().copy()
        ops.add_layer_norm(
            res_np, x.numpy(), as_dtype(w, dtype), as_dtype(b, dtype), dtype, 1e-5, device=target
        )
        ref = F.layer_norm((res + x).double(), (h,), rounded(w, dtype), rounded(b, dtype), 1e-5)
        np.testing.assert_allclose(res_np, ref.numpy(), atol=3e-5, rtol=1e-5)


def test_layer_norm_rejects_bad_arguments() -> None:
    x = np.zeros((2, 8), np.float32)
    w = np.ones(8, np.float32)
    with pytest.raises(ValueError, match="do not match"):
        ops.layer_norm(x, np.ones(7, np.float32), np.zeros(7, np.float32))
    with pytest.raises(ValueError, match="b: numpy dtype float16 does not hold float32"):
        ops.layer_norm(x, w, np.zeros(8, np.float16), "float32")
    with pytest.raises(ValueError):
        ops.layer_norm(np.zeros(8, np.float32), w, w)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(target: str, approximate: str) -> None:
    g = gen(13)
    # Widths around the 8/16-lane bodies and their tails; large |x| exercises the saturation.
    for n in [1, 7, 8, 16, 23, 1536]:
        x = torch.randn(3, n, generator=g) * 4
        x[0, 0] = 30.0
        if n > 1:
            x[0, 1] = -30.0
        x_np = x.numpy().copy()
        ops.gelu(x_np, approximate == "tanh", device=target)
        ref = F.gelu(x.double(), approximate=approximate)
        np.testing.assert_allclose(x_np, ref.numpy(), atol=2e-6, rtol=2e-6)


@pytest.mark.parametrize("dtype", WDTYPES)
def test_embedding(device: str, dtype: str) -> None:
    g = gen(6)
    table = torch.randn(100, 48, generator=g)
    ids = torch.tensor([0, 99, 5, 5, 42], dtype=torch.int32)
    out = ops.embedding(as_dtype(table, dtype), dtype, ids.numpy(), device=device)
    np.testing.assert_array_equal(out, rounded(table, dtype)[ids.long()].float().numpy())
    with pytest.raises(ValueError, match="vocabulary"):
        ops.embedding(as_dtype(table, dtype), dtype, np.array([100], np.int32), device=device)


# ---------------------------------------------------------------- rope


def rope_ref(x: torch.Tensor, pos: torch.Tensor, cos_sin: torch.Tensor, d: int) -> torch.Tensor:
    t = x.shape[0]
    rot = cos_sin.shape[1]
    xh = x.double().view(t, -1, d)
    cos = cos_sin[pos.long(), : rot // 2].double()
    sin = cos_sin[pos.long(), rot // 2 :].double()
    cos = torch.cat([cos, cos], -1)[:, None, :]
    sin = torch.cat([sin, sin], -1)[:, None, :]
    xr, xp = xh[..., :rot], xh[..., rot:]
    half = rot // 2
    rotated = torch.cat([-xr[..., half:], xr[..., :half]], -1)
    return torch.cat([xr * cos + rotated * sin, xp], -1).reshape(t, -1)


@pytest.mark.parametrize("rot_frac", [1.0, 0.5])
def test_rope(device: str, rot_frac: float) -> None:
    g = gen(8)
    t, hq, hk, d, max_pos = 6, 9, 3, 64, 512
    rot = int(d * rot_frac)
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, rot, 2).double() / rot))
    ang = torch.arange(max_pos).double()[:, None] * inv_freq[None, :]
    cos_sin = torch.cat([ang.cos(), ang.sin()], -1).float()
    pos = torch.tensor([0, 1, 7, 100, 511, 3], dtype=torch.int32)
    q = torch.randn(t, hq * d, generator=g)
    k = torch.randn(t, hk * d, generator=g)
    q_np, k_np = q.numpy().copy(), k.numpy().copy()
    ops.rope(q_np, k_np, pos.numpy(), cos_sin.numpy(), d, device=device)
    np.testing.assert_allclose(q_np, rope_ref(q, pos, cos_sin, d).numpy(), atol=1e-5)
    np.testing.assert_allclose(k_np, rope_ref(k, pos, cos_sin, d).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="position"):
        ops.rope(q_np, k_np, np.full(t, max_pos, np.int32), cos_sin.numpy(), d, device=device)


# ---------------------------------------------------------------- KV cache and attention


CACHE_DTYPES = ["float32", "bfloat16"]


def cache_as_torch(cache: np.ndarray, dtype: str) -> torch.Tensor:
    if dtype == "float32":
        return torch.from_numpy(cache).double()
    return torch.from_numpy(cache.view(np.int16)).view(torch.bfloat16).double()


@pytest.mark.parametrize("dtype", CACHE_DTYPES)
def test_write_kv(device: str, dtype: str) -> None:
    g = gen(9)
    blocks, bs, hk, d = 6, 4, 2, 8
    t = 5
    k = torch.randn(t, hk * d, generator=g)
    v = torch.randn(t, hk * d, generator=g)
    np_dtype = np.float32 if dtype == "float32" else np.uint16
    kc = np.zeros((blocks, bs, hk, d), np_dtype)
    vc = np.zeros((blocks, bs, hk, d), np_dtype)
    slots = np.array([3, -1, 17, 23, 0], np.int64)
    ops.write_kv(k.numpy(), v.numpy(), kc, vc, dtype, slots, device=device)
    kt, vt = cache_as_torch(kc, dtype).view(-1, hk * d), cache_as_torch(vc, dtype).view(-1, hk * d)
    ref_k = torch.zeros(blocks * bs, hk * d, dtype=torch.float64)
    ref_v = torch.zeros_like(ref_k)
    for i, s in enumerate(slots):
        if s >= 0:
            ref_k[s], ref_v[s] = rounded(k[i], dtype), rounded(v[i], dtype)
    torch.testing.assert_close(kt, ref_k, rtol=0, atol=0)
    torch.testing.assert_close(vt, ref_v, rtol=0, atol=0)
    with pytest.raises(ValueError, match="slot"):
        ops.write_kv(k.numpy(), v.numpy(), kc, vc, dtype, np.full(t, 24, np.int64), device=device)


def int16_rows(x: torch.Tensor, terms: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of x (as float32) as paged attention's integer kernels round them: scale = amax / lim,
    q = round-half-even(x * (lim / amax)) in float32, lim = floor(sqrt((2^31-1) / terms)) for a
    sum of `terms` products; returns (q as int64, scale as float64)."""
    lim = np.float32(np.floor(np.sqrt((2**31 - 1) / terms)))
    v = x.float().numpy()
    amax = np.abs(v).max(-1, keepdims=True).astype(np.float32)
    scale = amax / lim
    f = np.where(amax > 0, lim / np.where(amax > 0, amax, np.float32(1)), np.float32(0))
    q = np.rint(v * f.astype(np.float32))
    return torch.from_numpy(q.astype(np.int64)), torch.from_numpy(scale.astype(np.float64))


def attention_ref(
    q: torch.Tensor,
    kc: torch.Tensor,
    vc: torch.Tensor,
    qsl: list[int],
    seq_lens: list[int],
    tables: np.ndarray,
    hq: int,
    hk: int,
    d: int,
    scale: float,
    window: int,
    int_scores: bool = False,
) -> torch.Tensor:
    """Plain softmax(QK^T)V per sequence over the gathered cache, in float64. int_scores: the
    integer kernels of ops.attention_int16 (paged_attention_tiles.h): each scaled query row
    and each K row rounded to int16 with its own scale, products summed exactly; P V per 64-key
    tile with each V row and each row of probabilities times V scales rounded the same way."""
    bs = kc.shape[1]
    out = torch.zeros(q.shape[0], hq * d, dtype=torch.float64)
    for s, ctx in enumerate(seq_lens):
        q0, q1 = qsl[s], qsl[s + 1]
        n = q1 - q0
        rows = [int(tables[s][p // bs]) * bs + p % bs for p in range(ctx)]
        k = kc.reshape(-1, hk, d)[rows].repeat_interleave(hq // hk, dim=1)  # [ctx, hq, d]
        v = vc.reshape(-1, hk, d)[rows].repeat_interleave(hq // hk, dim=1)
        if int_scores:
            qi, dq = int16_rows((q[q0:q1].float() * float(np.float32(scale))).view(n, hq, d), d)
            ki, dk = int16_rows(k, d)
            isum = torch.einsum("qhd,khd->hqk", qi, ki).double()
            scores = isum * (dq.view(n, hq).T[:, :, None] * dk.view(ctx, hq).T[:, None, :])
        else:
            qs = q[q0:q1].double().view(n, hq, d)
            scores = torch.einsum("qhd,khd->hqk", qs, k) * scale
        pos = torch.arange(ctx - n, ctx)[:, None]
        key = torch.arange(ctx)[None, :]
        mask = key <= pos
        if window > 0:
            mask &= key > pos - window
        scores = scores.masked_fill(~mask, float("-inf"))
        probs = scores.softmax(-1)
        if not int_scores:
            out[q0:q1] = torch.einsum("hqk,khd->qhd", probs, v).reshape(n, hq * d)
            continue
        vi, dv = int16_rows(v, 64)
        acc = torch.zeros(hq, n, d, dtype=torch.float64)
        for t0 in range(0, ctx, 64):
            w = probs[:, :, t0 : t0 + 64] * dv[t0 : t0 + 64, :, 0].T[:, None, :]
            wi, dw = int16_rows(w, 64)
            acc += dw * torch.einsum("hqk,khd->hqd", wi, vi[t0 : t0 + 64]).double()
        out[q0:q1] = acc.permute(1, 0, 2).reshape(n, hq * d)
    return out


# The integer kernels (bf16 caches on AVX2) against the reference that rounds the same way: a
# weight w_j = p_j * dv_j near a rounding tie can round the other way from the kernel's float32
# probabilities (relative to the running max) than from the reference's float64 ones, moving an
# output by up to ~max(p) * |v| / 5792.
INT_EMULATED_ATOL = 4e-4
# ... and against exact float64 scores and P V on the same bf16 cache: the int16 rounding of q, K,
# V and the weights moves an output by at most this (random N(0, 1) caches, |q| up to ~8).
INT_EXACT_ATOL = 4e-3


def assert_attention(
    out: np.ndarray,
    q: torch.Tensor,
    kc_np: np.ndarray,
    vc_np: np.ndarray,
    dtype: str,
    qsl: list[int],
    seq_lens: list[int],
    tables: np.ndarray,
    hq: int,
    hk: int,
    d: int,
    scale: float,
    window: int,
    device: str,
) -> None:
    """out against the float64 reference over the cache contents, rounded the way this device
    and ISA round (ops.attention_int16); the integer kernels are also held to
    INT_EXACT_ATOL of exact scores and P V."""
    kt, vt = cache_as_torch(kc_np, dtype), cache_as_torch(vc_np, dtype)
    args = (q, kt, vt, qsl, seq_lens, tables, hq, hk, d, scale, window)
    int_scores = device == "cpu" and ops.attention_int16(dtype, d)
    ref = attention_ref(*args, int_scores=int_scores).numpy()
    if not int_scores:
        np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-4)
        return
    np.testing.assert_allclose(out, ref, atol=INT_EMULATED_ATOL, rtol=0)
    np.testing.assert_allclose(out, attention_ref(*args).numpy(), atol=INT_EXACT_ATOL, rtol=0)


# (query_len, context_len) per sequence: decode, whole prefill, chunked prefill that starts
# mid-sequence, and a long decode that takes the split-KV path.
SEQS = [(1, 37), (5, 5), (17, 100), (40, 63), (1, 700)]


@pytest.mark.parametrize("dtype", CACHE_DTYPES)
@pytest.mark.parametrize(("hq", "hk", "d"), [(4, 4, 64), (9, 3, 64), (8, 2, 128)])
@pytest.mark.parametrize("window", [0, 24])
def test_paged_attention(target: str, dtype: str, hq: int, hk: int, d: int, window: int) -> None:
    g = gen(hq * 100 + d + window)
    rng = np.random.default_rng(hq + d + window)
    bs = 16
    blocks_needed = [(ctx + bs - 1) // bs for _, ctx in SEQS]
    num_blocks = sum(blocks_needed) + 7
    perm = rng.permutation(num_blocks).astype(np.int32)
    max_blocks = max(blocks_needed) + 2
    tables = np.full((len(SEQS), max_blocks), -1, np.int32)  # unused entries stay invalid
    used = 0
    for s, nb in enumerate(blocks_needed):
        tables[s, :nb] = perm[used : used + nb]
        used += nb
    kc = torch.randn(num_blocks, bs, hk, d, generator=g)
    vc = torch.randn(num_blocks, bs, hk, d, generator=g)
    kc_np, vc_np = as_dtype(kc, dtype), as_dtype(vc, dtype)
    qsl = [0]
    for n, _ in SEQS:
        qsl.append(qsl[-1] + n)
    seq_lens = [ctx for _, ctx in SEQS]
    q = torch.randn(qsl[-1], hq * d, generator=g)
    scale = d**-0.5
    out = ops.paged_attention(
        q.numpy(),
        kc_np,
        vc_np,
        dtype,
        np.array(qsl, np.int32),
        np.array(seq_lens, np.int32),
        tables,
        hq,
        hk,
        d,
        scale,
        window,
        device=target,
    )
    assert_attention(
        out, q, kc_np, vc_np, dtype, qsl, seq_lens, tables, hq, hk, d, scale, window, target
    )


@pytest.mark.parametrize("dtype", CACHE_DTYPES)
@pytest.mark.parametrize(("q_len", "hk", "window"), [(1, 1, 0), (3, 3, 0), (1, 1, 600)])
def test_paged_attention_split_kv(
    target: str, dtype: str, q_len: int, hk: int, window: int
) -> None:
    """One long sequence: too few (sequence, head) items for the threads, so the KV range is
    split and the partial softmax states merged."""
    g = gen(11 + q_len + hk)
    bs, d, hq, ctx = 16, 64, 3 * hk, 1000
    nb = (ctx + bs - 1) // bs
    tables = np.random.default_rng(3).permutation(nb + 3)[None, :nb].astype(np.int32)
    kc = torch.randn(nb + 3, bs, hk, d, generator=g)
    vc = torch.randn(nb + 3, bs, hk, d, generator=g)
    kc_np, vc_np = as_dtype(kc, dtype), as_dtype(vc, dtype)
    q = torch.randn(q_len, hq * d, generator=g)
    qsl, seq_lens = [0, q_len], [ctx]
    out = ops.paged_attention(
        q.numpy(),
        kc_np,
        vc_np,
        dtype,
        np.array(qsl, np.int32),
        np.array(seq_lens, np.int32),
        tables,
        hq,
        hk,
        d,
        0.125,
        window,
        device=target,
    )
    assert_attention(
        out, q, kc_np, vc_np, dtype, qsl, seq_lens, tables, hq, hk, d, 0.125, window, target
    )


def paged_case(
    seqs: list[tuple[int, int]],
    hq: int,
    hk: int,
    d: int,
    window: int,
    dtype: str,
    seed: int,
    device: str,
) -> None:
    """fastlm's output against the float64 reference (assert_attention) for (query_len,
    context_len) sequences over a randomly scattered paged cache."""
    g = gen(seed)
    rng = np.random.default_rng(seed)
    bs = 16
    blocks_needed = [(ctx + bs - 1) // bs for _, ctx in seqs]
    num_blocks = sum(blocks_needed) + 3
    perm = rng.permutation(num_blocks).astype(np.int32)
    tables = np.full((len(seqs), max(blocks_needed) + 1), -1, np.int32)
    used = 0
    for s, nb in enumerate(blocks_needed):
        tables[s, :nb] = perm[used : used + nb]
        used += nb
    kc_np = as_dtype(torch.randn(num_blocks, bs, hk, d, generator=g), dtype)
    vc_np = as_dtype(torch.randn(num_blocks, bs, hk, d, generator=g), dtype)
    qsl = [0]
    for n, _ in seqs:
        qsl.append(qsl[-1] + n)
    seq_lens = [ctx for _, ctx in seqs]
    # Scaled up so softmax is peaked and the online rescaling (alpha) matters.
    q = torch.randn(qsl[-1], hq * d, generator=g) * 2
    scale = d**-0.5
    out = ops.paged_attention(
        q.numpy(),
        kc_np,
        vc_np,
        dtype,
        np.array(qsl, np.int32),
        np.array(seq_lens, np.int32),
        tables,
        hq,
        hk,
        d,
        scale,
        window,
        device=device,
    )
    assert_attention(
        out, q, kc_np, vc_np, dtype, qsl, seq_lens, tables, hq, hk, d, scale, window, device
    )


_DECODE_LENS = [1, 2, 15, 16, 17, 63, 64, 65, 100, 127, 128, 129, 200, 255, 256, 257]
# Named batches: one long prefill (several 64-row query blocks, causal tiles cut on the
# diagonal), chunked prefills that start mid-sequence next to decodes, and a batch of 32 decodes
# with different context lengths (tile remainders of every size).
TILING_BATCHES = {
    "long_prefill": [(1100, 1100)],
    "chunked_prefill": [(300, 1250), (129, 700), (1, 5), (2, 2)],
    "decode32": [(1, c) for c in _DECODE_LENS + [c + 300 for c in _DECODE_LENS]],
}
# (batch, hq, hk, d, window): SmolLM2's GQA group 3, group 4 (largest streaming group), group 6
# (decode through the block path), head_dim 80 (a 64 + 16 split) and 72 (AVX2 width only).
TILING_CASES = [
    ("long_prefill", 9, 3, 64, 0),
    ("long_prefill", 12, 2, 80, 200),
    ("chunked_prefill", 9, 3, 64, 0),
    ("chunked_prefill", 8, 2, 128, 100),
    ("chunked_prefill", 4, 4, 72, 0),
    ("decode32", 9, 3, 64, 0),
    ("decode32", 9, 3, 64, 50),
    ("decode32", 8, 2, 128, 0),
    ("decode32", 12, 2, 80, 0),
    ("decode32", 4, 4, 72, 70),
]


@pytest.mark.parametrize("dtype", CACHE_DTYPES)
@pytest.mark.parametrize(("batch", "hq", "hk", "d", "window"), TILING_CASES)
def test_paged_attention_tiling(
    target: str, dtype: str, batch: str, hq: int, hk: int, d: int, window: int
) -> None:
    paged_case(TILING_BATCHES[batch], hq, hk, d, window, dtype, seed=hq + d + window, device=target)


@pytest.mark.parametrize("dtype", CACHE_DTYPES)
def test_paged_attention_row_does_not_depend_on_chunking(target: str, dtype: str) -> None:
    """Batch-invariant mode: a query row's output has the same bits whether it is computed in one
    long prefill (KV segments walked inside one work item), in a chunk that starts mid-sequence,
    as a lone decode (KV heads and segments split over the threads, merged), or as one of 32
    decodes."""
    hq, hk, d, bs, ctx = 9, 3, 64, 16, 700
    g = gen(77)
    nb = (ctx + bs - 1) // bs
    table = np.random.default_rng(5).permutation(nb + 2)[:nb].astype(np.int32)
    kc = as_dtype(torch.randn(nb + 2, bs, hk, d, generator=g), dtype)
    vc = as_dtype(torch.randn(nb + 2, bs, hk, d, generator=g), dtype)
    q_all = (torch.randn(ctx, hq * d, generator=g) * 2).numpy()

    def run(seqs: list[tuple[int, int]], q: np.ndarray) -> np.ndarray:
        qsl = np.cumsum([0] + [n for n, _ in seqs]).astype(np.int32)
        tables = np.tile(table, (len(seqs), 1))
        lens = np.array([c for _, c in seqs], np.int32)
        return np.asarray(
            ops.paged_attention(
                q, kc, vc, dtype, qsl, lens, tables, hq, hk, d, d**-0.5, 0, device=target
            )
        )

    previous = ops.batch_invariant()
    ops.set_batch_invariant(True)
    try:
        whole = run([(ctx, ctx)], q_all)
        chunk = run([(100, 600), (ctx - 600, ctx)], np.concatenate([q_all[500:600], q_all[600:]]))
        np.testing.assert_array_equal(chunk[100:], whole[600:])
        np.testing.assert_array_equal(chunk[:100], whole[500:600])
        lone = run([(1, ctx)], q_all[ctx - 1 :])
        np.testing.assert_array_equal(lone, whole[ctx - 1 :])
        # 32 decodes at context lengths 669..700 (each row's own position).
        batch = run([(1, c) for c in range(ctx - 31, ctx + 1)], q_all[ctx - 32 :])
        np.testing.assert_array_equal(batch, whole[ctx - 32 :])
    finally:
        ops.set_batch_invariant(previous)


def test_paged_attention_rejects_bad_block() -> None:
    q = np.zeros((1, 64), np.float32)
    cache = np.zeros((2, 16, 1, 64), np.float32)
    with pytest.raises(ValueError, match="block"):
        ops.paged_attention(
            q,
            cache,
            cache,
            "float32",
            np.array([0, 1], np.int32),
            np.array([20], np.int32),
            np.array([[0, 5]], np.int32),
            1,
            1,
            64,
            0.125,
            0,
        )


@pytest.mark.parametrize("heads,d", [(12, 32), (4, 64), (3, 24), (2, 40)])
def test_encoder_attention(target: str, heads: int, d: int) -> None:
    """Bidirectional attention per sequence (BERT): lengths around the 8-row and 16-key blocks,
    including 1, and head dims off the 16-lane grid, against torch's
    scaled_dot_product_attention per sequence."""
    lens = [1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 38, 61]
    g = gen(heads * d)
    qsl = np.cumsum([0] + lens).astype(np.int32)
    qkv = torch.randn(int(qsl[-1]), 3 * heads * d, generator=g)
    scale = d**-0.5
    out = ops.encoder_attention(qkv.numpy(), qsl, heads, d, scale, device=target)
    ref = torch.empty(int(qsl[-1]), heads * d, dtype=torch.float64)
    for s in range(len(lens)):
        rows = qkv[qsl[s] : qsl[s + 1]].double().view(-1, 3, heads, d).transpose(0, 2)
        q, k, v = rows[:, 0], rows[:, 1], rows[:, 2]  # [heads, L, d]
        o = F.scaled_dot_product_attention(q, k, v, scale=scale)
        ref[qsl[s] : qsl[s + 1]] = o.transpose(0, 1).reshape(-1, heads * d)
    np.testing.assert_allclose(out, ref.numpy(), atol=2e-5, rtol=1e-5)


def test_encoder_attention_rejects_bad_offsets() -> None:
    qkv = np.zeros((10, 3 * 2 * 8), np.float32)
    with pytest.raises(ValueError, match="query_start_loc"):
        ops.encoder_attention(qkv, np.array([0, 4, 9], np.int32), 2, 8, 1.0)
    with pytest.raises(ValueError, match="columns"):
        ops.encoder_attention(qkv, np.array([0, 10], np.int32), 2, 16, 1.0)


def test_devices_listed_and_unknown_device_refused() -> None:
    assert DEVICES[0] == "cpu" and len(set(DEVICES)) == len(DEVICES)
    x = np.ones((1, 4), np.float32)
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        ops.silu_mul(x, device="tpu")
    if "cuda" not in DEVICES:
        with pytest.raises(ValueError, match="'cuda' is not available"):
            ops.silu_mul(x, device="cuda")
