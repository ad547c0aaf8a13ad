"""ctypes binding of build/<dir>/cuda/libfastlm_cuda_capi.so for the GPU tests and benchmarks.

torch allocates device memory; kernels get data_ptr()s and torch's current stream. Every call
checks the returned status and raises with the library's message.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

import torch

_P = ctypes.c_uint64  # device pointers and streams
_I = ctypes.c_int
_L = ctypes.c_int64
_F = ctypes.c_float
_U = ctypes.c_uint64

# Argument codes of each C function, its trailing stream included (cuda/testing/capi.cc).
_SIGNATURES: dict[str, str] = {
    "fl_rms_norm": "iplpfpllp",
    "fl_add_rms_norm": "ipppfpllp",
    "fl_head_rms_norm": "ipliipflp",
    "fl_layer_norm": "ippppfpllp",
    # dtype q q_stride nq k k_stride v v_stride nkv head_dim rot_dim positions cos_sin k_cache
    # v_cache slot_mapping tokens
    "fl_rope_write_kv": "iplipl" + "pl" + "iii" + "ppppp" + "l" + "p",
    "fl_silu_mul": "ippllp",
    "fl_gelu": "iplip",
    "fl_add_bias": "ippllp",
    "fl_embedding": "iplppllp",
    "fl_gather_rows": "iplppllp",
    "fl_pool": "ippiliipp",
    # dtype kernel q q_stride out out_stride k_cache v_cache block_tables max_blocks block_size
    # k v kv_stride num_tokens num_seqs qsl seq_lens max_q max_seq nq nkv head_dim scale window
    # causal workspace workspace_bytes num_splits
    "fl_attention": "ii"
    + "pl"
    + "pl"
    + "ppp"
    + "ii"
    + "pp"
    + "l"
    + "ii"
    + "pp"
    + "ii"
    + "iii"
    + "f"
    + "ii"
    + "pu"
    + "i"
    + "p",
    "fl_apply_penalties": "pii" + "ppppppp" + "p",
    "fl_apply_logit_bias": "piipppp",
    "fl_apply_token_bitmask": "piippp",
    "fl_sample": "pii" + "ppppppp" + "p",
    "fl_compute_logprobs": "piipi" + "ppppp",
    "fl_philox_uniform": "ppipp",
    "fl_gemm": "iipppplllip",
}
_CODES = {"i": _I, "l": _L, "p": _P, "f": _F, "u": _U}

DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
STATUS = ["ok", "invalid argument", "unsupported", "CUDA error"]


def library_path() -> Path:
    env = os.environ.get("FASTLM_CUDA_CAPI")
    if env:
        return Path(env)
    root = Path(__file__).resolve().parents[2]
    found = sorted(root.glob("build/*/cuda/libfastlm_cuda_capi.so"))
    if not found:
        raise FileNotFoundError("libfastlm_cuda_capi.so: build it (bench/gpu/device_check.sh)")
    return found[0]


class Status(RuntimeError):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{STATUS[code] if 0 <= code < 4 else code}: {message}")
        self.code = code


class Capi:
    def __init__(self, path: Path | None = None) -> None:
        self.lib = ctypes.CDLL(str(path or library_path()))
        for name, sig in _SIGNATURES.items():
            fn = getattr(self.lib, name)
            fn.argtypes = [_CODES[c] for c in sig]
            fn.restype = _I
        self.lib.fl_last_error.restype = ctypes.c_char_p
        self.lib.fl_attention_workspace_bytes.argtypes = [_I, _I, _I, _I]
        self.lib.fl_attention_workspace_bytes.restype = _U
        self.lib.fl_has_gemm.restype = _I
        self.lib.fl_gemm_cached_algorithms.restype = _I
        self.lib.fl_caching_allocator_roundtrip.argtypes = [
            ctypes.POINTER(ctypes.c_uint64),
            _I,
            _I,
            ctypes.POINTER(ctypes.c_int64),
        ]
        self.lib.fl_caching_allocator_roundtrip.restype = _I
        self.lib.fl_device_memory_info.argtypes = [ctypes.POINTER(ctypes.c_uint64)] * 2
        self.lib.fl_device_memory_info.restype = _I

    def __call__(self, name: str, *args: Any) -> None:
        fn = getattr(self.lib, "fl_" + name)
        conv = [ptr(a) if isinstance(a, torch.Tensor) or a is None else a for a in args]
        conv.append(torch.cuda.current_stream().cuda_stream)
        code = fn(*conv)
        if code != 0:
            raise Status(code, self.lib.fl_last_error().decode())

    def attention(
        self,
        dtype: torch.dtype,
        kernel: int,
        q: torch.Tensor,
        out: torch.Tensor,
        *,
        num_q_heads: int,
        num_kv_heads: int,
        head_dim: int,
        query_start_loc: torch.Tensor,
        max_query_len: int,
        max_seq_len: int,
        scale: float,
        seq_lens: torch.Tensor | None = None,
        causal: bool = True,
        sliding_window: int = 0,
        k_cache: torch.Tensor | None = None,
        v_cache: torch.Tensor | None = None,
        block_tables: torch.Tensor | None = None,
        block_size: int = 0,
        k: torch.Tensor | None = None,
        v: torch.Tensor | None = None,
        workspace: torch.Tensor | None = None,
        num_splits: int = 0,
    ) -> None:
        """fl_attention (kernel 0: dispatcher, 1: split-KV, 2: tiles); q, out [T, heads * D]
        rows, k/v (dense mode) [T, kv_heads * D] rows."""
        self(
            "attention",
            DTYPES[dtype],
            kernel,
            q,
            q.stride(0),
            out,
            out.stride(0),
            k_cache,
            v_cache,
            block_tables,
            0 if block_tables is None else block_tables.shape[1],
            block_size,
            k,
            v,
            0 if k is None else k.stride(0),
            q.shape[0],
            query_start_loc.numel() - 1,
            query_start_loc,
            seq_lens,
            max_query_len,
            max_seq_len,
            num_q_heads,
            num_kv_heads,
            head_dim,
            scale,
            sliding_window,
            int(causal),
            workspace,
            0 if workspace is None else workspace.numel(),
            num_splits,
        )

    def workspace(self, tokens: int, heads: int, head_dim: int, max_seq_len: int) -> torch.Tensor:
        n = self.lib.fl_attention_workspace_bytes(tokens, heads, head_dim, max_seq_len)
        return torch.empty(n, device="cuda", dtype=torch.uint8)

    def status_of(self, name: str, *args: Any) -> int:
        try:
            self(name, *args)
        except Status as e:
            return e.code
        return 0


def ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else int(t.data_ptr())


def dt(dtype: torch.dtype) -> int:
    return DTYPES[dtype]
