"""The benchmark suite in one run: export cost, decode/prefill speed of our artifacts beside the peers'
artifacts in the same runtimes, transformers as the reference, all against the memory bandwidth measured
in the same run. Prints one table of ratios and writes benchmarks/results.md and benchmarks/results.json.

    python -m benchmarks.run_all [--ckpt-dir /work/bench-ckpt] [--out bench-out] [--threads 2]
                                 [--prompt-tokens 128] [--gen-tokens 64] [--repeat 3]
                                 [--skip-export] [--no-moe] [--no-reference] [--no-window-sweep]

Checkpoints (random weights, made locally by benchmarks.checkpoints if missing): the Qwen2-0.5B shape and
the MoE hybrid shape (16 experts top-4 + shared expert, sliding window 512 on some layers).
Pairs measured side by side (each artifact in a fresh process, same prompt, same thread count):
- GGUF Q4_0, ours vs llama.cpp's converter + quantizer, both in llama-cpp-python (target >= 0.97x decode)
- ONNX int4, ours vs onnxruntime-genai's builder, both in onnxruntime-genai (target >= 1.0x decode);
  ours also in our onnxruntime Session
- MoE: our ONNX int4 and GGUF Q4_0 vs transformers (float32) on the same checkpoint
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwen2_edge.bench.bandwidth import Bandwidth, measure_bandwidth
from qwen2_edge.bench.measure import BenchOptions
from qwen2_edge.bench.report import format_table, machine_info
from qwen2_edge.bench.result import BenchResult
from qwen2_edge.bench.run import bench_artifact
from qwen2_edge.errors import UserError

from . import export_cost, peers
from .checkpoints import bench_checkpoint

REPO = Path(__file__).resolve().parents[1]
GENAI = "benchmarks.genai_session:GenaiSession"


@dataclass
class Job:
    key: str  # stable id used by the ratio rows
    label: str
    path: Path
    session_target: str | None = None  # None: the runtime registry's choice
    window_sweep: bool | None = False


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_jobs(
    jobs: list[Job], opts: BenchOptions, bw: Bandwidth
) -> tuple[dict[str, BenchResult], dict[str, str]]:
    results: dict[str, BenchResult] = {}
    failures: dict[str, str] = {}
    for job in jobs:
        if not job.path.exists():
            failures[job.key] = f"{job.path} was not produced"
            continue
        log(f"bench: {job.label} ({job.path.name}) ...")
        o = BenchOptions(**{**opts.to_json(), "window_sweep": job.window_sweep})
        try:
            r = bench_artifact(job.path, o, bw, job.label, job.session_target)
        except UserError as e:
            failures[job.key] = str(e)
            log(f"  failed: {e}")
            continue
        results[job.key] = r
        log(
            f"  decode {r.decode_tok_s:.2f} tok/s, prefill {r.prefill_tok_s:.1f} tok/s, peak {r.peak_rss_mb:.0f} MB"
        )
    return results, failures


def export_moe(ckpt: Path, out: Path, threads: int) -> list[export_cost.ExportCost]:
    """Our exports of the MoE checkpoint (no peer converts Qwen2-MoE hybrids with windows exactly)."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    costs = []
    for fmt, quant, name in (("onnx", "int4", "ours-moe-int4-onnx"), ("gguf", "q4_0", "ours-moe-q4_0.gguf")):
        cost = export_cost.ExportCost(f"ours moe {fmt} {quant}", "qwen2-edge", fmt, quant, str(out / name))
        log(f"export: {cost.label} ...")
        cmd = export_cost._ours_cmd(ckpt, fmt, quant, out / name, threads)
        costs.append(export_cost._run_steps(cost, [(cost.label, cmd)], env))
        log(
            f"  {cost.wall_s:.1f} s, peak {cost.peak_rss_mb:.0f} MB"
            + ("" if cost.ok else f", FAILED: {cost.error}")
        )
    return costs


# (row name, numerator key, denominator key, target on decode ratio or None)
SPEED_PAIRS = (
    ("GGUF Q4_0: ours / llama.cpp's (llama-cpp-python)", "gguf_ours", "gguf_peer", 0.97),
    ("ONNX int4: ours / builder's (onnxruntime-genai)", "onnx_ours_genai", "onnx_builder_genai", 1.0),
    ("ONNX int4: ours (our ORT session) / builder's (genai)", "onnx_ours", "onnx_builder_genai", None),
    ("dense: our GGUF Q4_0 / transformers fp32", "gguf_ours", "dense_ref", None),
    ("dense: our ONNX int4 / transformers fp32", "onnx_ours", "dense_ref", None),
    ("MoE: our ONNX int4 / transformers fp32", "moe_onnx", "moe_ref", None),
    ("MoE: our GGUF Q4_0 / transformers fp32", "moe_gguf", "moe_ref", None),
)


def speed_ratios(res: dict[str, BenchResult], failures: dict[str, str]) -> list[dict[str, Any]]:
    rows = []
    for name, a, b, target in SPEED_PAIRS:
        if a in res and b in res:
            x, y = res[a], res[b]
            rows.append({
                "pair": name,
                "decode_ratio": x.decode_tok_s / y.decode_tok_s,
                "prefill_ratio": x.prefill_tok_s / y.prefill_tok_s,
                "rss_ratio": x.peak_rss_mb / y.peak_rss_mb,
                "decode": [x.decode_tok_s, y.decode_tok_s],
                "prefill": [x.prefill_tok_s, y.prefill_tok_s],
                "roofline_fraction": [x.roofline_fraction, y.roofline_fraction],
                "target": target,
            })  # fmt: skip
        else:
            why = failures.get(a) or failures.get(b) or "not run"
            rows.append({"pair": name, "missing": why, "target": target})
    return rows


def format_speed_ratios(rows: list[dict[str, Any]]) -> str:
    w = max(len(r["pair"]) for r in rows)
    head = f"{'pair':{w}}  {'decode x':>8}  {'prefill x':>9}  {'RSS x':>6}  {'decode t/s (a | b)':>19}  {'roofline (a | b)':>16}  target"
    lines = [head, "-" * len(head)]
    for r in rows:
        if "missing" in r:
            lines.append(f"{r['pair']:{w}}  not measured: {r['missing']}")
            continue
        tgt = (
            ""
            if r["target"] is None
            else f">= {r['target']:.2f} {'met' if r['decode_ratio'] >= r['target'] else 'MISSED'}"
        )
        lines.append(
            f"{r['pair']:{w}}  {r['decode_ratio']:8.2f}  {r['prefill_ratio']:9.2f}  {r['rss_ratio']:6.2f}  "
            f"{r['decode'][0]:8.2f} | {r['decode'][1]:8.2f}  "
            f"{r['roofline_fraction'][0]:6.0%} | {r['roofline_fraction'][1]:6.0%}  {tgt}"
        )
    return "\n".join(lines)


def write_results(doc: dict[str, Any], text: dict[str, str], folder: Path) -> None:
    from qwen2_edge.fsutil import atomic_file

    with atomic_file(folder / "results.json", force=True) as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
    m = doc["machine"]
    md = [
        "# Benchmark results",
        "",
        f"Run {doc['date']} with `python -m benchmarks.run_all` on {m['cpu']}, {m['cpus']} vCPUs "
        f"({', '.join(m['simd'])}), {doc['options']['threads']} threads; memory read bandwidth measured in the "
        f"same run: {m['bandwidth']['gb_s']:.1f} GB/s best, {m['bandwidth']['median_gb_s']:.1f} GB/s median. "
        f"Prompt {doc['options']['prompt_tokens']} tokens, {doc['options']['gen_tokens']} generated, "
        f"median of {doc['options']['repeat']} rounds after a warm-up. The machine's cores are shared with other "
        "jobs, so absolute numbers vary run to run; ratios are measured side by side in one run.",
        "",
    ]
    for title, body in text.items():
        md += [f"## {title}", "", "```", body, "```", ""]
    with atomic_file(folder / "results.md", force=True) as tmp:
        tmp.write_text("\n".join(md))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--ckpt-dir", type=Path, default=Path(os.environ.get("QWEN2_EDGE_BENCH_CKPT", "/work/bench-ckpt"))
    )
    ap.add_argument("--out", type=Path, default=REPO / "bench-out")
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks", help="where results.md/.json go")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-export", action="store_true", help="reuse the artifacts of a previous run")
    ap.add_argument("--no-moe", action="store_true")
    ap.add_argument("--no-reference", action="store_true", help="skip transformers")
    ap.add_argument("--no-window-sweep", action="store_true")
    args = ap.parse_args(argv)

    dense = bench_checkpoint("qwen2-0.5b", args.ckpt_dir / "qwen2-0.5b")
    moe = None if args.no_moe else bench_checkpoint("moe", args.ckpt_dir / "moe")
    exp_dir = args.out / "export"
    exp_dir.mkdir(parents=True, exist_ok=True)
    opts = BenchOptions(prompt_tokens=args.prompt_tokens, gen_tokens=args.gen_tokens, threads=args.threads,
                        repeat=args.repeat)  # fmt: skip

    log("measuring memory bandwidth ...")
    bw = measure_bandwidth(args.threads)
    log(f"  {bw.gb_s:.1f} GB/s best, {bw.median_gb_s:.1f} median")
    text: dict[str, str] = {}
    doc: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine_info(bw),
                           "options": opts.to_json(), "llama_cpp_python": peers.llama_cpp_version()}  # fmt: skip

    if not args.skip_export:
        costs = export_cost.run_export_cost(dense, exp_dir, args.threads, log=log)
        rows = export_cost.ratio_rows(costs)
        text["Export cost (Qwen2-0.5B shape, bf16 checkpoint)"] = export_cost.format_ratio_table(rows)
        doc["exports"] = [c.to_json() for c in costs]
        doc["export_ratios"] = rows
        if moe is not None:
            doc["moe_exports"] = [c.to_json() for c in export_moe(moe, exp_dir, args.threads)]

    sweep = None if not args.no_window_sweep else False
    jobs = [
        Job("gguf_ours", "ours q4_0 gguf", exp_dir / "ours-q4_0.gguf"),
        Job("gguf_peer", "llama.cpp q4_0 gguf", exp_dir / "llamacpp-q4_0.gguf"),
        Job("onnx_ours", "ours int4 onnx (ORT)", exp_dir / "ours-int4-onnx"),
        Job("onnx_ours_genai", "ours int4 onnx (genai)", exp_dir / "ours-int4-onnx", GENAI),
        Job("onnx_builder_genai", "builder int4 onnx (genai)", exp_dir / "builder-int4-onnx", GENAI),
    ]
    if not args.no_reference:
        jobs.append(Job("dense_ref", "transformers fp32 (0.5B)", dense))
    if moe is not None:
        jobs += [
            Job("moe_onnx", "ours moe int4 onnx (ORT)", exp_dir / "ours-moe-int4-onnx", window_sweep=sweep),
            Job("moe_gguf", "ours moe q4_0 gguf", exp_dir / "ours-moe-q4_0.gguf", window_sweep=sweep),
        ]
        if not args.no_reference:
            jobs.append(Job("moe_ref", "transformers fp32 (MoE)", moe))
    results, failures = run_jobs(jobs, opts, bw)
    ordered = [results[j.key] for j in jobs if j.key in results]
    text["Speed (each artifact in a fresh process)"] = format_table(ordered)
    ratios = speed_ratios(results, failures)
    text["Side-by-side ratios (a / b)"] = format_speed_ratios(ratios)
    doc["results"] = {k: r.to_json() for k, r in results.items()}
    doc["failures"] = failures
    doc["speed_ratios"] = ratios

    for title, body in text.items():
        print(f"\n== {title}\n{body}")
    write_results(doc, text, args.results)
    log(f"wrote {args.results / 'results.md'} and results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
