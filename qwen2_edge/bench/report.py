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
    ("KV", "kv_cache", "{}"),
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


# The long-context table: (header, format of one ContextResult as a string).
CONTEXT_COLUMNS = (
    ("context", lambda c: str(c.context)),
    ("prefill t/s", lambda c: f"{c.prefill_tok_s:.1f}"),
    ("decode t/s", lambda c: f"{c.decode_tok_s:.2f}"),
    ("ms/token", lambda c: f"{c.ms_per_token:.2f}"),
    ("peak RSS MB", lambda c: f"{c.peak_rss_mb:.0f}"),
    ("KV MB", lambda c: f"{c.kv_bytes / 2**20:.2f} {'(m)' if c.kv_bytes_source == 'measured' else '(c)'}"),
    ("MB/token", lambda c: f"{c.bytes_per_token / 1e6:.2f}"),
    ("of roofline", lambda c: f"{c.roofline_fraction:.0%}"),
)


def _align(rows: list[list[str]], left: int) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def format_table(results: Sequence[BenchResult]) -> str:
    rows = [[h for h, _, _ in COLUMNS]]
    rows += [[_cell(r, a, f, h) for h, a, f in COLUMNS] for r in results]
    lines = _align(rows, 3)
    if any(r.contexts for r in results):
        lines += ["", format_context_table(results)]
    return "\n".join(lines)


def format_context_table(results: Sequence[BenchResult]) -> str:
    """One row per artifact and context; KV MB (m) measured by the runtime, (c) computed by the byte model."""
    rows = [["artifact", "runtime", "KV", *(h for h, _ in CONTEXT_COLUMNS)]]
    for r in results:
        rows += [[r.label, r.runtime, c.kv_cache, *(f(c) for _, f in CONTEXT_COLUMNS)] for c in r.contexts]
    gen = next(c.gen_tokens for r in results for c in r.contexts)
    head = (
        f"decode after `context` cached tokens (a fresh process per artifact and context, its session sized "
        f"to it; {gen} tokens per round); KV MB: (m) measured by the runtime, (c) computed"
    )
    return "\n".join([head, *_align(rows, 3)])


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
    """Bars of prefill and decode tokens/s per artifact, the decode roofline marked on each; with contexts,
    decode tokens/s and KV-cache MB against the context, one line per artifact."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..fsutil import atomic_file

    names = [r.label or Path(r.path).name for r in results]
    x = range(len(results))
    with_ctx = any(r.contexts for r in results)
    fig, axes = plt.subplots(
        1, 4 if with_ctx else 2, figsize=(max(8, 2.2 * len(results)) + (9 if with_ctx else 0), 4.5)
    )
    ax1, ax2 = axes[:2]
    if with_ctx:
        _plot_contexts(results, names, axes[2], axes[3])
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


def _plot_contexts(results: Sequence[BenchResult], names: list[str], ax_speed, ax_kv) -> None:
    for r, name in zip(results, names, strict=True):
        if not r.contexts:
            continue
        ctx = [c.context for c in r.contexts]
        label = f"{name} (KV {r.contexts[0].kv_cache})"
        line = ax_speed.plot(ctx, [c.decode_tok_s for c in r.contexts], marker="o", label=label)[0]
        ax_speed.vlines(
            ctx, [c.decode_tok_s_min for c in r.contexts], [c.decode_tok_s_max for c in r.contexts],
            color=line.get_color(), lw=1,
        )  # fmt: skip
        measured = all(c.kv_bytes_source == "measured" for c in r.contexts)
        ax_kv.plot(
            ctx, [c.kv_bytes / 2**20 for c in r.contexts], marker="o", color=line.get_color(),
            ls="-" if measured else "--", label=f"{label}{'' if measured else ', computed'}",
        )  # fmt: skip
    for ax, title in ((ax_speed, "decode tokens/s vs context"), (ax_kv, "KV cache MB vs context")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens cached")
        ax.set_title(title)
        ax.legend(fontsize=7)
    ax_speed.set_ylim(bottom=0)
    ax_kv.set_yscale("log")
