"""The pipeline's report: one table (artifact, size, bits/weight, KLD, Δppl, top-1 with an f32 KV cache, the
deployed KV cache and KLD, Δppl, top-1 at it, decode tok/s, roofline %) as markdown, JSON and a
self-contained HTML page."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from ..fsutil import atomic_file

COLUMNS = (
    "artifact",
    "size_mb",
    "bits_per_weight",
    "kld_mean",
    "delta_ppl",
    "top1",
    "kv_cache",
    "kld_at_kv",
    "dppl_at_kv",
    "top1_at_kv",
    "decode_tok_s",
    "roofline_pct",
    "passed",
)


KV_NOTE = (
    "kld_mean, delta_ppl, top1 (gated): each artifact with an f32 KV cache, i.e. its weights alone. "
    "kv_cache: the KV cache it is deployed and benchmarked with; kld_at_kv, dppl_at_kv, top1_at_kv: "
    "accuracy at that cache, each scored token decoded from it (the same numbers where it is f32)."
)


def summary_rows(result) -> list[dict[str, Any]]:
    by_path_check = {str(Path(a["path"])): a for a in result.check.get("artifacts", [])}
    by_path_bench = {str(Path(b["path"])): b for b in result.bench}
    rows = []
    for art in result.artifacts:
        c = by_path_check.get(str(art.path), {})
        b = by_path_bench.get(str(art.path), {})
        d = c.get("deployed") or {}  # check's row at the deployed KV cache (the gated row's when f32)
        rows.append(
            {
                "artifact": art.name,
                "path": str(art.path),
                "format": art.format,
                "quant": art.quant,
                "size_mb": art.export.get("bytes", 0) / 2**20,
                "bits_per_weight": art.export.get("bits_per_weight"),
                "kld_mean": c.get("kld_mean"),
                "delta_ppl": c.get("delta_ppl"),
                "top1": c.get("top1_agreement"),
                "kv_cache": d.get("kv_cache") or b.get("kv_cache"),
                "kld_at_kv": d.get("kld_mean"),
                "dppl_at_kv": d.get("delta_ppl"),
                "top1_at_kv": d.get("top1_agreement"),
                "decode_tok_s": b.get("decode_tok_s"),
                "roofline_pct": None if b.get("roofline_fraction") is None else 100 * b["roofline_fraction"],
                "passed": c.get("passed"),
            }
        )
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def text_table(rows: list[dict[str, Any]]) -> str:
    cells = [list(COLUMNS)] + [[_fmt(r.get(c)) for c in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells)


def write_report(cfg, result) -> dict[str, Any]:
    out = Path(cfg.out)
    rows = summary_rows(result)
    payload = {
        "config": cfg.to_json(),
        "student": str(result.student),
        "distill": result.distill,
        "teacher_vs_student": result.teacher_vs_student,
        "summary": rows,
        "check": result.check,
        "bench": result.bench,
        "artifacts": [a.export for a in result.artifacts],
        "refused": result.refused,
    }
    with atomic_file(out / "report.json", force=True) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, default=str))
    md = ["# qwen2-edge pipeline report", "", f"Student: `{result.student}`", ""]
    if result.teacher_vs_student:
        md += [
            "Student vs teacher: "
            + ", ".join(f"{k} {_fmt(v)}" for k, v in result.teacher_vs_student.items()),
            "",
        ]
    md += [markdown_table(rows), "", KV_NOTE, ""]
    for r in result.refused:
        md += [f"- {r['artifact']} not written: {r['reason']}"]
    if result.check.get("report"):
        md += [f"Detailed accuracy report: `{result.check['report']}`", ""]
    with atomic_file(out / "summary.md", force=True) as tmp:
        tmp.write_text("\n".join(md))
    check_link = result.check.get("report")
    page = [
        "<!doctype html><meta charset='utf-8'><title>qwen2-edge report</title>",
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 10px;border-bottom:1px solid #ddd}"
        ".bad{color:#b00;font-weight:bold}</style>",
        "<h1>qwen2-edge pipeline report</h1>",
        f"<p>Student: <code>{html.escape(str(result.student))}</code></p>",
        "<table><tr>" + "".join(f"<th>{c}</th>" for c in COLUMNS) + "</tr>",
    ]
    for r in rows:
        cls = " class='bad'" if r.get("passed") is False else ""
        page.append(
            f"<tr{cls}>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in COLUMNS) + "</tr>"
        )
    page.append("</table>")
    page.append(f"<p>{html.escape(KV_NOTE)}</p>")
    if check_link:
        page.append(
            f"<p>Accuracy details and plots: <a href='{html.escape(Path(check_link).name)}'>{html.escape(Path(check_link).name)}</a></p>"
        )
    with atomic_file(out / "report.html", force=True) as tmp:
        tmp.write_text("\n".join(page))
    return {"rows": rows}
