"""Benchmark output: the machine, a plain-text table, JSON, and a bar chart."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .bandwidth import Bandwidth
from .result import BenchResult

# (header, attribute, format) of the printed table.
COLUMNS = (
    ("artifact", "label", "{}"),
    ("runtime", "runtime", "{}"),
    ("MB", "file_mb", "{:.1f}"),
    ("bpw", "bits_per_weight", "{:.2f}"),
    ("load s", "load_s", "{:.2f}"),
    ("TTFT s", "ttft_s", "{:.3f}"),
    ("prefill t/s", "prefill_tok_s", "{:.1f}"),
    ("decode t/s", "decode_tok_s", "{:.2f}"),
    ("decode min-max", None, None),
    ("peak RSS MB", "peak_rss_mb", "{:.0f}"),
    ("MB/token", "bytes_per_token", None),
    ("roofline t/s", "roofline_tok_s", "{:.1f}"),
    ("of roofline", "roofline_fraction", "{:.0%}"),
)


def machine_info(bw: Bandwidth | None = None) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("", platform.machine()):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "simd": simd,
        "python": platform.python_version(),
    }
    if bw is not None:
        info["bandwidth"] = bw.to_json()
    return info


def _cell(r: BenchResult, attr: str | None, fmt: str | None, header: str) -> str:
    if header == "decode min-max":
        return f"{r.decode_tok_s_min:.1f}-{r.decode_tok_s_max:.1f}"
    if attr == "bytes_per_token":
        return f"{r.bytes_per_token / 1e6:.1f}"
    return fmt.format(getattr(r, attr))


def format_table(results: Sequence[BenchResult]) -> str:
    rows = [[h for h, _, _ in COLUMNS]]
    rows += [[_cell(r, a, f, h) for h, a, f in COLUMNS] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in results:
        if r.window_decode_tok_s:
            sweep = ", ".join(f"ctx {c}: {v:.2f}" for c, v in r.window_decode_tok_s.items())
            lines.append(f"{r.label}: decode tok/s with window {r.window}: {sweep}")
    return "\n".join(lines)


def results_json(results: Sequence[BenchResult], bw: Bandwidth | None, extra: dict | None = None) -> dict:
    doc: dict[str, Any] = {"machine": machine_info(bw), "results": [r.to_json() for r in results]}
    if extra:
        doc.update(extra)
    return doc


def write_json(doc: dict, out: str | Path, force: bool = True) -> Path:
    from ..fsutil import atomic_file

    with atomic_file(out, force=force) as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
    return Path(out)


def plot(results: Sequence[BenchResult], out: str | Path, force: bool = True) -> Path:
    """Bars of prefill and decode tokens/s per artifact, the decode roofline marked on each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..fsutil import atomic_file

    names = [r.label or Path(r.path).name for r in results]
    x = range(len(results))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 2.2 * len(results)), 4.5))
    ax1.bar(x, [r.prefill_tok_s for r in results], color="tab:blue")
    ax1.set_title("prefill tokens/s")
    ax2.bar(x, [r.decode_tok_s for r in results], color="tab:orange", label="decode (median)")
    ax2.errorbar(
        x,
        [r.decode_tok_s for r in results],
        yerr=[
            [r.decode_tok_s - r.decode_tok_s_min for r in results],
            [r.decode_tok_s_max - r.decode_tok_s for r in results],
        ],
        fmt="none",
        ecolor="black",
        capsize=3,
    )
    ax2.scatter(
        x, [r.roofline_tok_s for r in results], marker="_", s=600, color="red", label="bandwidth roofline"
    )
    ax2.set_title("decode tokens/s")
    ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.set_xticks(list(x), names, rotation=20, ha="right", fontsize=8)
    threads = results[0].threads if results else 0
    fig.suptitle(
        f"qwen2-edge bench ({threads} threads, {results[0].bandwidth_gb_s:.1f} GB/s read)" if results else ""
    )
    fig.tight_layout()
    with atomic_file(out, force=force) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(out)
