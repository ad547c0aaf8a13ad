"""The ctypes signatures in tests/gpu/capi.py match cuda/testing/capi.cc's C functions.

The GPU tests only run on a lent GPU machine; a ctypes signature that drifted from the C code
passes garbage silently there, so the two are compared here, on every CI run, without a GPU.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
C_TYPES = {"int": "i", "int64_t": "l", "uintptr_t": "p", "float": "f", "uint64_t": "u"}


def c_signatures() -> dict[str, str]:
    src = (ROOT / "cuda" / "testing" / "capi.cc").read_text()
    sigs = {}
    for m in re.finditer(r"\bint (fl_\w+)\(([^)]*)\)", src):
        params = [p.strip() for p in m.group(2).split(",") if p.strip()]
        codes = []
        for p in params:
            ctype = p.rsplit(" ", 1)[0].strip()
            codes.append(C_TYPES.get(ctype, "?" + ctype))
        sigs[m.group(1)] = "".join(codes)
    return sigs


def python_signatures() -> dict[str, str]:
    spec = importlib.util.spec_from_file_location("capi", ROOT / "tests" / "gpu" / "capi.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module._SIGNATURES)


def test_every_python_signature_matches_its_c_function() -> None:
    c, py = c_signatures(), python_signatures()
    assert len(py) >= 19
    for name, sig in py.items():
        assert name in c, f"{name} is not in cuda/testing/capi.cc"
        assert sig == c[name], f"{name}: ctypes {sig!r} != C {c[name]!r}"


def test_c_functions_taking_a_stream_are_all_bound() -> None:
    c, py = c_signatures(), python_signatures()
    with_stream = {n for n, s in c.items() if s.endswith("p")}
    assert with_stream - set(py) == set()
