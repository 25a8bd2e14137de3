"""The architecture's claim as one figure: decode tok/s and peak RSS against the context, dense vs windowed /
MoE-hybrid, at the distilled-student scale (benchmarks/student_tradeoff.py results.json) and at Qwen2-0.5B
scale (benchmarks/architecture_claim.py results.json).

    python -m benchmarks.plot_tradeoff STUDENT_RESULTS.json ARCH_RESULTS.json OUT.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def student_series(doc: dict) -> dict[str, dict[str, list[tuple[int, float, float]]]]:
    """{label: [(context, decode tok/s, peak RSS MB), ...]} per runtime, from student_tradeoff results."""
    out: dict[str, list] = {}
    for name, row in doc["students"].items():
        for fmt, sp in (row.get("speed") or {}).items():
            if not isinstance(sp, dict) or "contexts" not in sp:
                continue
            runtime = "onnxruntime" if fmt == "onnx" else "llama.cpp"
            pts = sorted((int(c), v["decode_tok_s"], v["peak_rss_mb"]) for c, v in sp["contexts"].items())
            out[f"{name} ({runtime})"] = pts
    return out


def arch_series(doc: dict) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in doc["results"]:
        pts = sorted((c["context"], c["decode_tok_s"], c["peak_rss_mb"]) for c in r.get("contexts", []))
        out[r["label"]] = pts
    return out


def plot(student: dict, arch: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    panels = [
        (axes[0, 0], student, 1, "distilled students (2.5M active params): decode tok/s"),
        (axes[0, 1], student, 2, "distilled students: peak RSS (MB)"),
        (axes[1, 0], arch, 1, "Qwen2-0.5B shapes (random weights, int4): decode tok/s"),
        (axes[1, 1], arch, 2, "Qwen2-0.5B shapes: peak RSS (MB)"),
    ]
    for ax, series, k, title in panels:
        for label, pts in series.items():
            if not pts:
                continue
            style = "-" if "onnx" in label else "--"
            marker = "o" if label.startswith("dense") and "windowed" not in label.split(" ")[0] else "s"
            ax.plot([p[0] for p in pts], [p[k] for p in pts], style, marker=marker, label=label)
        ax.set_xscale("log", base=2)
        if k == 1:
            ax.set_yscale("log")
        ax.set_xlabel("context (tokens cached)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Dense full attention vs windowed / MoE-hybrid: solid onnxruntime, dashed llama.cpp", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        raise SystemExit(__doc__)
    student = student_series(json.loads(Path(argv[0]).read_text()))
    arch = arch_series(json.loads(Path(argv[1]).read_text()))
    plot(student, arch, Path(argv[2]))
    print(argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main())
