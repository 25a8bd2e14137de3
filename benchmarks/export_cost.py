"""Export cost: wall time and peak RSS of our exports beside the peers' converters, same checkpoint, one run.

    python -m benchmarks.export_cost [--ckpt DIR] [--out DIR] [--threads T] [--json OUT]

Jobs (each a child process, timed and its peak RSS read from wait4):
- GGUF f16:  `qwen2-edge export --format gguf --quant f16`  vs llama.cpp's convert_hf_to_gguf.py --outtype f16
- GGUF Q4_0: `qwen2-edge export --format gguf --quant q4_0` vs the converter (f16) + llama.cpp's quantizer
- ONNX int4: `qwen2-edge export --format onnx --quant int4` vs onnxruntime-genai's builder -p int4 -e cpu
Targets (issue 9): no slower than the peer for the same format; at most half the builder's memory.
The checkpoint is read once before any job, so every job starts from the same (warm) page cache.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import peers

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CKPT = Path(os.environ.get("QWEN2_EDGE_BENCH_CKPT", "/work/bench-ckpt")) / "qwen2-0.5b"


@dataclass
class ExportCost:
    label: str
    tool: str  # "qwen2-edge", "llama.cpp", "onnxruntime-genai"
    format: str
    quant: str
    output: str
    wall_s: float = 0.0
    peak_rss_mb: float = 0.0
    output_mb: float = 0.0
    ok: bool = False
    error: str = ""
    steps: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        d["wall_s"] = round(self.wall_s, 2)
        d["peak_rss_mb"] = round(self.peak_rss_mb, 1)
        d["output_mb"] = round(self.output_mb, 1)
        return d


def _ours_cmd(ckpt: Path, fmt: str, quant: str, out: Path, threads: int) -> list[str]:
    return [peers.PYTHON, "-m", "qwen2_edge", "export", str(ckpt), "--format", fmt, "--quant", quant,
            "--out", str(out), "--threads", str(threads), "--force"]  # fmt: skip


def _size_mb(p: Path) -> float:
    if p.is_file():
        return p.stat().st_size / 2**20
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 2**20 if p.exists() else 0.0


def _run_steps(cost: ExportCost, steps: list[tuple[str, list[str]]], env: dict | None = None) -> ExportCost:
    """A job of one or more processes: times add up, peak memory is the largest of them."""
    for label, cmd in steps:
        stats = peers.run_measured(cmd, label, env=env)
        cost.steps.append(stats.to_json() | {"output_tail": stats.output_tail[-300:]})
        cost.wall_s += stats.wall_s
        cost.peak_rss_mb = max(cost.peak_rss_mb, stats.peak_rss_mb)
        if not stats.ok:
            tail = [ln for ln in stats.output_tail.splitlines() if ln.strip()]
            cost.error = f"{label}: {tail[-1] if tail else f'exit {stats.returncode}'}"
            return cost
    cost.ok = True
    cost.output_mb = _size_mb(Path(cost.output))
    return cost


def _warm(ckpt: Path) -> None:
    for f in sorted(ckpt.glob("*.safetensors")):
        with f.open("rb") as fh:
            while fh.read(64 * 2**20):
                pass


def export_jobs(ckpt: Path, out: Path, threads: int) -> list[tuple[ExportCost, list[tuple[str, list[str]]]]]:
    """(cost record, steps) for every export compared. Outputs land in `out` for the speed benchmark."""
    peer_f16 = out / "llamacpp-f16.gguf"
    return [
        (ExportCost("ours gguf f16", "qwen2-edge", "gguf", "f16", str(out / "ours-f16.gguf")),
         [("qwen2-edge export gguf f16", _ours_cmd(ckpt, "gguf", "f16", out / "ours-f16.gguf", threads))]),
        (ExportCost("llama.cpp gguf f16", "llama.cpp", "gguf", "f16", str(peer_f16)),
         [("convert_hf_to_gguf f16", peers.converter_command(ckpt, peer_f16, "f16"))]),
        (ExportCost("ours gguf q4_0", "qwen2-edge", "gguf", "q4_0", str(out / "ours-q4_0.gguf")),
         [("qwen2-edge export gguf q4_0", _ours_cmd(ckpt, "gguf", "q4_0", out / "ours-q4_0.gguf", threads))]),
        (ExportCost("llama.cpp gguf q4_0", "llama.cpp", "gguf", "q4_0", str(out / "llamacpp-q4_0.gguf")),
         [("convert_hf_to_gguf f16", peers.converter_command(ckpt, out / "llamacpp-q4_0.f16.gguf", "f16")),
          ("llama_model_quantize q4_0",
           peers.quantize_command(out / "llamacpp-q4_0.f16.gguf", out / "llamacpp-q4_0.gguf", "q4_0", threads))]),
        (ExportCost("ours onnx int4", "qwen2-edge", "onnx", "int4", str(out / "ours-int4-onnx")),
         [("qwen2-edge export onnx int4", _ours_cmd(ckpt, "onnx", "int4", out / "ours-int4-onnx", threads))]),
        (ExportCost("builder onnx int4", "onnxruntime-genai", "onnx", "int4", str(out / "builder-int4-onnx")),
         [("onnxruntime-genai builder int4", peers.builder_command(ckpt, out / "builder-int4-onnx", "int4"))]),
    ]  # fmt: skip


def run_export_cost(ckpt: Path, out: Path, threads: int = 2, log=print) -> list[ExportCost]:
    out.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    peers.llama_cpp_tree()  # fetch the converter before timing anything
    _warm(ckpt)
    results = []
    for cost, steps in export_jobs(ckpt, out, threads):
        target = Path(cost.output)
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        log(f"export: {cost.label} ...")
        results.append(_run_steps(cost, steps, env))
        r = results[-1]
        log(f"  {r.wall_s:.1f} s, peak {r.peak_rss_mb:.0f} MB" + ("" if r.ok else f", FAILED: {r.error}"))
    tmp_f16 = out / "llamacpp-q4_0.f16.gguf"
    if tmp_f16.exists():
        tmp_f16.unlink()
    return results


# (format/quant, ours label, peer label) pairs compared in the ratio table.
PAIRS = (
    ("GGUF f16", "ours gguf f16", "llama.cpp gguf f16"),
    ("GGUF Q4_0", "ours gguf q4_0", "llama.cpp gguf q4_0"),
    ("ONNX int4", "ours onnx int4", "builder onnx int4"),
)


def ratio_rows(results: list[ExportCost]) -> list[dict]:
    """ours / peer for time and memory, per format; target: time <= 1.0, memory <= 0.5 of the builder's."""
    by = {r.label: r for r in results}
    builder = by.get("builder onnx int4")
    rows = []
    for name, ours_label, peer_label in PAIRS:
        ours, peer = by.get(ours_label), by.get(peer_label)
        if not ours or not peer:
            continue
        row = {"export": name, "ours_s": ours.wall_s, "peer_s": peer.wall_s, "ours_mb": ours.peak_rss_mb,
               "peer_mb": peer.peak_rss_mb, "ok": ours.ok and peer.ok,
               "error": ours.error or peer.error}  # fmt: skip
        if row["ok"]:
            row["time_ratio"] = ours.wall_s / peer.wall_s
            row["mem_ratio"] = ours.peak_rss_mb / peer.peak_rss_mb
            if builder and builder.ok:
                row["mem_vs_builder"] = ours.peak_rss_mb / builder.peak_rss_mb
        rows.append(row)
    return rows


def format_ratio_table(rows: list[dict]) -> str:
    head = f"{'export':10}  {'ours s':>7}  {'peer s':>7}  {'time x':>6}  {'ours MB':>8}  {'peer MB':>8}  {'mem x':>6}  {'vs builder MB':>13}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if not r["ok"]:
            lines.append(f"{r['export']:10}  failed: {r['error']}")
            continue
        vb = f"{r['mem_vs_builder']:.2f}" if "mem_vs_builder" in r else "-"
        lines.append(
            f"{r['export']:10}  {r['ours_s']:7.1f}  {r['peer_s']:7.1f}  {r['time_ratio']:6.2f}  "
            f"{r['ours_mb']:8.0f}  {r['peer_mb']:8.0f}  {r['mem_ratio']:6.2f}  {vb:>13}"
        )
    lines.append("time x, mem x: ours / the peer for the same format (target time x <= 1.00); "
                 "vs builder: ours / onnxruntime-genai builder's peak RSS (target <= 0.50)")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", type=Path, default=DEFAULT_CKPT, help="Qwen2-0.5B-shaped checkpoint")
    ap.add_argument("--out", type=Path, default=REPO / "bench-out" / "export")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if not (args.ckpt / "config.json").is_file():
        from .checkpoints import bench_checkpoint

        bench_checkpoint("qwen2-0.5b", args.ckpt)
    results = run_export_cost(args.ckpt, args.out, args.threads, log=lambda m: print(m, file=sys.stderr))
    rows = ratio_rows(results)
    print(format_ratio_table(rows))
    if args.json:
        args.json.write_text(
            json.dumps({"exports": [r.to_json() for r in results], "ratios": rows}, indent=2)
        )
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
