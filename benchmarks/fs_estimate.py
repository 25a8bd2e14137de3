"""The free-space estimate against real exports: every format and quant, peak bytes on disk measured.

    python -m benchmarks.fs_estimate [--models builtin:teacher,dense,moe,...] [--json OUT]

`--models`: builtin:teacher, checkpoint folders, or names of the test fixtures (qwen2_edge.testing). For each
export the peak is what the output's file system holds at once: the finished artifact (every file of an ONNX
folder, external data included), plus for K-quants the f16 GGUF llama.cpp quantizes from (measured inside
the export, just before llama.cpp reads it). The estimate must be at least the peak (an upper bound).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure(model: str, work: Path) -> list[dict]:
    import qwen2_edge.exporters.gguf as gguf_mod
    from qwen2_edge.exporters.api import export_bytes, export_model, make_policy
    from qwen2_edge.exporters.registry import FORMATS
    from qwen2_edge.model.checkpoint import open_checkpoint

    ckpt = open_checkpoint(model, need_tokenizer=True)
    temp: dict[str, int] = {}
    real_quantize = gguf_mod.llama_quantize

    def spy(src, dst, ftype, threads):  # the f16 temporary exists beside the output until this returns
        temp["f16"] = Path(src).stat().st_size
        real_quantize(src, dst, ftype, threads)

    gguf_mod.llama_quantize = spy
    rows = []
    try:
        for fmt, target in FORMATS.items():
            for quant in target.quants:
                out = work / f"{fmt}-{quant}" if fmt == "onnx" else work / f"{quant}.gguf"
                temp.clear()
                try:
                    res = export_model(model, fmt, quant, out, force=True)
                except Exception as e:  # a format that refuses this model
                    rows.append({"model": model, "format": fmt, "quant": quant, "refused": str(e)})
                    continue
                final = _size(out)
                scheme = target.scheme(quant)
                est = export_bytes(ckpt, fmt, quant, make_policy() if scheme else None, scheme)
                peak = final + temp.get("f16", 0)
                rows.append({
                    "model": model, "format": fmt, "quant": quant, "artifact_bytes": final,
                    "temp_bytes": temp.get("f16", 0), "peak_bytes": peak, "estimate_bytes": est,
                    "ratio": round(est / peak, 3), "reported_bytes": res.bytes,
                })  # fmt: skip
    finally:
        gguf_mod.llama_quantize = real_quantize
    return rows


def _resolve(name: str, root: Path) -> str:
    from qwen2_edge.testing import FIXTURES, make_checkpoint

    if name in FIXTURES:
        return str(make_checkpoint(name, root / name))
    return name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="builtin:teacher")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name in args.models.split(","):
            work = Path(d) / name.replace(":", "_")
            work.mkdir()
            rows += measure(_resolve(name, Path(d) / "ckpt"), work)
    print("| model | format | quant | artifact MB | temp MB | peak MB | estimate MB | estimate / peak |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "refused" in r:
            print(f"| {Path(r['model']).name} | {r['format']} | {r['quant']} | refused | | | | |")
            continue
        print(
            f"| {Path(r['model']).name} | {r['format']} | {r['quant']} | {r['artifact_bytes'] / 1e6:.3f} | "
            f"{r['temp_bytes'] / 1e6:.3f} | {r['peak_bytes'] / 1e6:.3f} | {r['estimate_bytes'] / 1e6:.3f} | "
            f"{r['ratio']:.2f} |"
        )
    bad = [r for r in rows if "ratio" in r and r["ratio"] < 1]
    print(f"\n{len(bad)} export(s) above the estimate" + (f": {bad}" if bad else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
