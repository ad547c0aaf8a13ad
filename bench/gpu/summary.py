"""One table for device_check.sh: tests/gpu results per test function (pass/fail counts over its
parameters, the first failure's message) and the kernel benchmark's figures."""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path


def tests_table(xml_path: Path) -> list[str]:
    if not xml_path.exists():
        return [f"(no {xml_path.name}: pytest did not finish)"]
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    first_failure: dict[str, str] = {}
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        name = case.get("name", "?").split("[")[0]
        failed = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped")
        if failed is not None or skipped is not None:
            groups[name][1] += 1
            node = failed if failed is not None else skipped
            assert node is not None
            message = " ".join((node.get("message") or "").split())
            first_failure.setdefault(name, message[:90])
        else:
            groups[name][0] += 1
    lines = [f"{'test':<48} {'pass':>5} {'fail':>5}  first failure"]
    for name, (ok, bad) in sorted(groups.items()):
        lines.append(f"{name:<48} {ok:>5} {bad:>5}  {first_failure.get(name, '')}")
    total_ok = sum(g[0] for g in groups.values())
    total_bad = sum(g[1] for g in groups.values())
    lines.append(f"{'TOTAL':<48} {total_ok:>5} {total_bad:>5}")
    return lines


def format_bench_row(r: dict) -> str:
    figs = [f"{r['ms']:.3f} ms"]
    if "fraction_of_copy" in r:
        tbs = r["bytes"] / (r["ms"] * 1e-3) / 1e12
        figs.append(f"{tbs:.2f} TB/s = {100 * r['fraction_of_copy']:.0f}% of copy rate")
    if "tflops" in r:
        figs.append(f"{r['tflops']:.0f} TFLOP/s")
    if "torch_tflops" in r:
        figs.append(f"torch.matmul {r['torch_tflops']:.0f}")
    if "torch_sdpa_tflops" in r:
        figs.append(f"torch SDPA {r['torch_sdpa_tflops']:.0f}")
    return f"{r['name']:<48} " + ", ".join(figs)


def bench_table(json_path: Path) -> list[str]:
    if not json_path.exists():
        return [f"(no {json_path.name}: the benchmark did not finish)"]
    data = json.loads(json_path.read_text())
    lines = [f"{data['device']}: device-to-device copy {data['copy_bytes_per_s'] / 1e12:.2f} TB/s"]
    lines += [format_bench_row(r) for r in data["rows"]]
    return lines


def main() -> None:
    xml_path, json_path = Path(sys.argv[1]), Path(sys.argv[2])
    print("=" * 100)
    print("\n".join(tests_table(xml_path)))
    print("-" * 100)
    print("\n".join(bench_table(json_path)))
    print("=" * 100)


if __name__ == "__main__":
    main()
