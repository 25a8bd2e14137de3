"""Student trade-off (issue #13, deliverable 5), the quality half: is a MoE-hybrid windowed student as good as
a dense full-attention student with about the same active parameters per token?

    python -m benchmarks.student_tradeoff [--out bench-out/student_tradeoff] [--steps 60]
        [--students dense,moe_windowed,...] [--stages distill,params,quality,long_ctx,int4] [--threads 1]

Every student (a spec in benchmarks/students/NAME.json, or a path to one) is distilled from builtin:teacher
on the built-in corpus with the SAME training settings (DEMO_CONFIG, --steps, seed 0, seq_len 256), then
measured. One function per stage, each adding one section to the student's row; the rows go to
OUT/results.json and a table to OUT/results.md (rewritten after every student, so an interrupted run keeps
what it finished). A finished student (OUT/NAME/student with a distill_report.json of the same spec and
training settings) is reused, so rerunning with more stages (the speed/memory half) costs no training.

Stages:
- distill: `qwen2_edge.distill.api.distill` -> OUT/NAME/student (HF checkpoint + distill_report.json).
- params: total and active (routed experts count top_k of E) parameters, `model.params.count_params`.
- quality: the distill report's final evaluation (`distill.trainer.evaluate`): held-out perplexity and
  KL(teacher || student) at tau 1 over ALL held-out sequences of 256 tokens (--eval-seqs to cap), every
  position scored (positions < window do not exercise the window).
- long_ctx: `validation.compare.check_artifacts` with the teacher as reference and the float student as the
  candidate, 512-token chunks scored on their second half (every scored token is past any window <= 256):
  the student's perplexity and mean KLD to the teacher where windowed layers really see less context.
- int4: quantize once (`quant.quantize_model` via `exporters.api.quantize_for_export`, int4 block 32),
  export the same codes to ONNX int4 and GGUF q4_0, check both against the float student at ctx 512
  (mean KLD, perplexity change, top-1); file bytes, and the bytes one decode step reads at 512 / 4096 /
  16384 tokens of context from the ONNX artifact's own tensors (`bench.bytes_per_token`, f16 KV cache) -
  computed, not timed; the speed/memory half measures it.

Default students: (a) dense (the teacher's layers 0 and 3, full attention), (b) moe_windowed (MoE layer 0
with a narrower shared expert so active parameters match (a) within 0.5%, 64-token window on layer 0),
(c) moe_all_windowed_w128 (b's layers, both windowed at 128). About 2 minutes per student at 60 steps on an
idle 2-core machine with 1 thread. Measured results and the variants tried:
benchmarks/student_tradeoff_results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO / "benchmarks" / "students"
DEFAULT_STUDENTS = ("dense", "moe_windowed", "moe_all_windowed_w128")
BASELINE = "dense"  # relative columns compare every student with this one
TEACHER = "builtin:teacher"
CONTEXTS = (512, 4096, 16384)  # byte model contexts (the speed half's contexts)
KV_BYTES = 2.0  # f16 KV cache: what llama.cpp and our bench default to
# Training settings that decide the weights: a reused student must match all of them.
SAME_TRAINING = ("steps", "batch_size", "grad_accum", "lr", "min_lr_ratio", "warmup", "weight_decay",
                 "alpha", "tau", "aux_weight", "seed", "dtype")  # fmt: skip


@dataclass
class Run:
    out: Path
    steps: int
    seed: int
    threads: int
    eval_seqs: int | None  # None: all held-out sequences
    ctx: int
    chunks: int
    method: str
    retrain: bool
    log: Callable[[str], None]
    bench_threads: int = 2
    cache: dict[str, Any] = field(default_factory=dict)  # shared across students (the teacher's numbers)

    def train_config(self):
        from qwen2_edge.distill.config import DEMO_CONFIG

        return replace(
            DEMO_CONFIG, steps=self.steps, seed=self.seed, eval_max_seqs=self.eval_seqs, eval_at_start=False,
            progress=False,
        )


@dataclass
class Student:
    name: str
    spec_path: Path

    def folder(self, run: Run) -> Path:
        return run.out / self.name

    def checkpoint(self, run: Run) -> Path:
        return self.folder(run) / "student"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- stages: each adds row[stage] ----------------------------------------------------------------------
def stage_distill(run: Run, s: Student, row: dict) -> None:
    from qwen2_edge.distill.api import REPORT, distill
    from qwen2_edge.distill.config import DEMO_SEQ_LEN
    from qwen2_edge.distill.student import StudentSpec

    spec = StudentSpec.from_json(s.spec_path)
    cfg = run.train_config()
    ckpt = s.checkpoint(run)
    report_file = ckpt / REPORT
    reused = False
    if report_file.is_file() and not run.retrain:
        old = json.loads(report_file.read_text())
        same = old["student_spec"] == spec.to_dict() and old["seq_len"] == DEMO_SEQ_LEN
        same = same and all(_same(old["train_config"].get(k), getattr(cfg, k)) for k in SAME_TRAINING)
        same = same and old["train_config"].get("eval_max_seqs") == cfg.eval_max_seqs
        reused = same
        if not same:
            run.log(f"{s.name}: {ckpt} was trained differently; distilling again")
    t0 = time.perf_counter()
    if not reused:
        distill(TEACHER, spec, None, ckpt, cfg, seq_len=DEMO_SEQ_LEN, force=True, log=run.log)
    report = json.loads(report_file.read_text())
    row["spec"] = spec.to_dict()
    row["distill"] = {
        "path": str(ckpt),
        "reused": reused,
        "steps": report["train_config"]["steps"],
        "train_seconds": report["seconds"],
        "wall_seconds": None if reused else round(time.perf_counter() - t0, 1),
        "tokens_seen": report["tokens_seen"],
        "init": report["init"]["summary"],
        "expert_cv": report.get("expert_cv", {}),
    }


def _same(saved: Any, now: Any) -> bool:
    return saved == now or (isinstance(saved, list) and list(now) == saved)


def stage_params(run: Run, s: Student, row: dict) -> None:
    from qwen2_edge.model.checkpoint import open_checkpoint
    from qwen2_edge.model.params import count_params
    from qwen2_edge.model.spec import MoEFFN

    spec = open_checkpoint(s.checkpoint(run)).spec
    c = count_params(spec)
    row["params"] = {
        "total": c.total,
        "active": c.active,
        "embedding": c.embedding,
        "layers": spec.num_layers,
        "moe_layers": [i for i, layer in enumerate(spec.layers) if isinstance(layer.ffn, MoEFFN)],
        "windows": list(spec.windows),
        "max_position_embeddings": spec.max_position_embeddings,
    }


def stage_quality(run: Run, s: Student, row: dict) -> None:
    from qwen2_edge.distill.api import REPORT

    report = json.loads((s.checkpoint(run) / REPORT).read_text())
    final = report["evaluations"][-1]
    row["quality"] = {
        "source": "distill_report.json final evaluation (distill.trainer.evaluate, tau 1)",
        "seq_len": report["seq_len"],
        "sequences": report["heldout_sequences"] if run.eval_seqs is None else run.eval_seqs,
        "ppl": report["heldout_ppl"],
        "kl_to_teacher": report["heldout_kl_to_teacher"],
        "teacher_ppl": report["teacher_heldout_ppl"],
        "step": final["step"],
    }


def stage_long_ctx(run: Run, s: Student, row: dict) -> None:
    from qwen2_edge.runtimes.reference import ReferenceSession
    from qwen2_edge.validation.compare import CheckOptions, check_artifacts

    opts = CheckOptions(ctx=run.ctx, chunks=run.chunks, threads=run.threads, progress=False)
    student = ReferenceSession(s.checkpoint(run), threads=run.threads)
    res = check_artifacts(TEACHER, [student], opts)
    a = res.artifacts[0].summary
    row["long_ctx"] = {
        "source": f"check_artifacts(teacher, [float student]), ctx {res.ctx}, scored from {res.score_from}",
        "ctx": res.ctx,
        "chunks": res.chunks,
        "tokens": a["tokens"],
        "ppl": a["ppl"],
        "ppl_err": a["ppl_err"],
        "teacher_ppl": res.reference["ppl"],
        "kld_to_teacher": a["kld_mean"],
        "kld_err": a["kld_err"],
        "top1_vs_teacher": a["top1_agreement"],
    }


def stage_int4(run: Run, s: Student, row: dict) -> None:
    from qwen2_edge.bench.bytes_per_token import artifact_file_bytes, bytes_per_token, inventory
    from qwen2_edge.exporters.api import export_checkpoint, make_policy, quantize_for_export
    from qwen2_edge.exporters.registry import get_format
    from qwen2_edge.model.checkpoint import open_checkpoint
    from qwen2_edge.validation.compare import CheckOptions, check_artifacts

    folder = s.folder(run)
    t0 = time.perf_counter()
    ckpt = open_checkpoint(s.checkpoint(run), need_tokenizer=True)
    qmodel = quantize_for_export(ckpt, get_format("onnx").scheme("int4"), run.method, make_policy())
    quant_s = time.perf_counter() - t0
    targets = {"onnx": ("int4", folder / "onnx-int4"), "gguf": ("q4_0", folder / "student-q4_0.gguf")}
    exported = {}
    for fmt, (quant, path) in targets.items():
        r = export_checkpoint(ckpt, fmt, quant, path, qmodel=qmodel, force=True, threads=run.threads)
        exported[fmt] = {
            "path": str(path), "quant": quant, "bytes": artifact_file_bytes(path),
            "bits_per_weight": round(r.bits_per_weight, 3), "export_seconds": round(r.seconds, 1),
        }  # fmt: skip
    opts = CheckOptions(ctx=run.ctx, chunks=run.chunks, threads=run.threads, progress=False)
    res = check_artifacts(s.checkpoint(run), [p for _, p in targets.values()], opts)
    for fmt, a in zip(targets, res.artifacts, strict=True):
        m = a.summary
        exported[fmt].update(
            kld=m["kld_mean"], kld_err=m["kld_err"], kld_p99=m["kld_p99"], ppl=m["ppl"],
            delta_ppl_rel=m["delta_ppl_rel"], top1=m["top1_agreement"], greedy_match=a.greedy_match,
        )  # fmt: skip
        if a.deployed is not None:  # the runtime's default KV cache, decoded token by token (what ships)
            d = a.deployed.summary
            exported[fmt]["deployed"] = {
                "kv_cache": a.deployed.kv_cache, "measured": a.deployed.measured,
                "kld": d["kld_mean"], "delta_ppl_rel": d["delta_ppl_rel"],
            }  # fmt: skip
    inv = inventory(targets["onnx"][1], "onnx", KV_BYTES)
    row["int4"] = {
        "source": f"check_artifacts(float student, [onnx int4, gguf q4_0]), ctx {res.ctx}, "
        f"scored from {res.score_from}; {run.method} int4 block 32, default policy; kld etc.: f32 KV cache "
        "(the weights alone); deployed: the runtime's default KV cache, token-by-token decode",
        "method": run.method,
        "quantize_seconds": round(quant_s, 1),
        "float_ppl": res.reference["ppl"],
        **exported,
        "decode_bytes_onnx_int4_f16kv": {
            str(c): bytes_per_token(inv, c).to_json() for c in CONTEXTS
        },  # the byte model: every weight a token passes through + the KV rows it attends to
    }


def stage_speed(run: Run, s: Student, row: dict) -> None:
    """The device half: the student's int4 ONNX folder and Q4_0 GGUF (from the int4 stage) in their runtimes
    at each runtime's default KV cache (onnxruntime f32, llama.cpp f16), `qwen2-edge bench --contexts`:
    decode tok/s, ms/token, peak RSS and KV bytes after 512 / 4096 / 16384 cached tokens, each context in a
    fresh process sized for it, the two artifacts' rounds interleaved."""
    from qwen2_edge.bench.measure import BenchOptions
    from qwen2_edge.bench.run import bench_artifacts

    folder = s.folder(run)
    paths = [folder / "onnx-int4", folder / "student-q4_0.gguf"]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise SystemExit(f"{s.name}: run the int4 stage first (missing {', '.join(missing)})")
    # A tiny student decodes a token in ~0.2-2 ms: 256 tokens per round keep the median above timer noise.
    opts = BenchOptions(threads=run.bench_threads, repeat=5, contexts=CONTEXTS, window_sweep=False,
                        prompt_tokens=128, gen_tokens=32, context_gen_tokens=256)  # fmt: skip
    results = bench_artifacts(paths, opts, labels=["onnx int4", "gguf q4_0"], progress=run.log)
    row["speed"] = {
        "source": f"bench_artifacts(contexts={list(CONTEXTS)}), {run.bench_threads} threads, runtime default KV",
        **{
            r.format: {
                "kv_cache": r.contexts[0].kv_cache if r.contexts else None,
                "file_mb": r.file_mb,
                "contexts": {
                    str(c.context): {
                        "decode_tok_s": c.decode_tok_s, "ms_per_token": c.ms_per_token,
                        "peak_rss_mb": c.peak_rss_mb, "baseline_rss_mb": c.baseline_rss_mb,
                        "kv_bytes": c.kv_bytes, "kv_bytes_source": c.kv_bytes_source,
                        "bytes_per_token": c.bytes_per_token,
                    }  # fmt: skip
                    for c in r.contexts
                },
            }
            for r in results
        },
    }


STAGES: dict[str, Callable[[Run, Student, dict], None]] = {
    "distill": stage_distill,
    "params": stage_params,
    "quality": stage_quality,
    "long_ctx": stage_long_ctx,
    "int4": stage_int4,
    "speed": stage_speed,
}


# -- report ----------------------------------------------------------------------------------------------
def _f(x: Any, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _deployed(d: dict | None) -> str:
    return "-" if not d else f"{d['kld']:.4f} ({d['kv_cache']}{'' if d['measured'] else ', = f32 row'})"


def _rel(x: float | None, base: float | None) -> str:
    return "-" if x is None or not base else f"{100 * (x / base - 1):+.1f}%"


def markdown(rows: dict[str, dict], meta: dict) -> str:
    base = rows.get(BASELINE, {})

    def g(r: dict, *path: str) -> Any:
        for p in path:
            r = (r or {}).get(p)
        return r

    lines = [
        f"Students distilled from {TEACHER} for {meta['steps']} steps each (same data, schedule, seed "
        f"{meta.get('seed', 0)}); "
        f"{meta['threads']} torch thread(s); load average at start {meta['load_start']}.",
        "",
        "| student | layers: MoE / windows | params | active | ppl@256 | vs dense | KL@256 | ppl@512 "
        "| vs dense | KLD@512 | int4 KLD onnx / gguf | deployed KV: KLD onnx / gguf | int4 Δppl onnx "
        "| MB onnx / gguf | decode MB/tok @512/4096/16384 | distill s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        p = r.get("params", {})
        layout = (
            f"{p.get('layers', '?')}L: MoE {p.get('moe_layers', '?')} / "
            f"{['full' if w is None else w for w in p.get('windows', [])]}"
        )
        mb = g(r, "int4", "decode_bytes_onnx_int4_f16kv") or {}
        step_mb = " / ".join(_f((mb.get(str(c)) or {}).get("total", 0) / 1e6, ".2f") for c in CONTEXTS)
        lines.append(
            "| " + " | ".join([
                name, layout, _f(p.get("total"), ","), _f(p.get("active"), ","),
                _f(g(r, "quality", "ppl"), ".2f"), _rel(g(r, "quality", "ppl"), g(base, "quality", "ppl")),
                _f(g(r, "quality", "kl_to_teacher"), ".4f"),
                _f(g(r, "long_ctx", "ppl"), ".2f"), _rel(g(r, "long_ctx", "ppl"), g(base, "long_ctx", "ppl")),
                _f(g(r, "long_ctx", "kld_to_teacher"), ".4f"),
                f"{_f(g(r, 'int4', 'onnx', 'kld'), '.4f')} / {_f(g(r, 'int4', 'gguf', 'kld'), '.4f')}",
                " / ".join(_deployed(g(r, "int4", f, "deployed")) for f in ("onnx", "gguf")),
                _rel(1 + (g(r, "int4", "onnx", "delta_ppl_rel") or 0), 1)
                if g(r, "int4", "onnx") else "-",
                f"{_f((g(r, 'int4', 'onnx', 'bytes') or 0) / 1e6, '.2f')} / "
                f"{_f((g(r, 'int4', 'gguf', 'bytes') or 0) / 1e6, '.2f')}",
                step_mb, _f(g(r, "distill", "train_seconds"), ".0f"),
            ]) + " |"
        )  # fmt: skip
    if any(g(r, "speed") for r in rows.values()):
        lines += ["", *speed_table(rows, base)]
    t = next((r for r in rows.values() if g(r, "quality", "teacher_ppl")), {})
    lc = next((r for r in rows.values() if g(r, "long_ctx", "teacher_ppl")), {})
    lines += [
        "",
        f"Teacher: ppl@256 {_f(g(t, 'quality', 'teacher_ppl'), '.2f')}, "
        f"ppl@512 {_f(g(lc, 'long_ctx', 'teacher_ppl'), '.2f')}.",
        "ppl@256 / KL@256: the distill report's evaluation over the held-out sequences (256 tokens, every "
        "position scored). ppl@512 / KLD@512: check_artifacts with the teacher as reference, 512-token "
        "chunks scored on positions 256-511. int4: RTN int4 block 32 (same codes in both files) vs the float "
        "student at ctx 512 with an f32 KV cache (the weights alone), and at each runtime's default KV "
        "cache decoded token by token (what ships). decode MB/tok: the byte model on the ONNX int4 artifact "
        "with an f16 KV cache (weights read + KV rows attended), computed, not timed.",
    ]
    return "\n".join(lines) + "\n"


def speed_table(rows: dict[str, dict], base: dict) -> list[str]:
    """Decode tok/s and peak RSS per context and runtime, each with its ratio to the dense student."""
    cs = [str(c) for c in CONTEXTS]
    out = [
        "| student | runtime (KV cache) | decode tok/s @" + " / ".join(cs) + " | vs dense | peak RSS MB @"
        + " / ".join(cs) + " | vs dense | KV MiB @" + " / ".join(cs) + " |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        for fmt in ("onnx", "gguf"):
            sp = ((r.get("speed") or {}).get(fmt)) or {}
            bp = ((base.get("speed") or {}).get(fmt)) or {}
            if not sp:
                continue
            ctx, bctx = sp["contexts"], bp.get("contexts", {})

            def col(key: str, d: dict, fmt_: str) -> str:
                return " / ".join(_f((d.get(c) or {}).get(key), fmt_) for c in cs)

            def ratio(key: str, ctx: dict = ctx, bctx: dict = bctx) -> str:
                return " / ".join(
                    f"{ctx[c][key] / bctx[c][key]:.2f}x" if c in ctx and c in bctx and bctx[c][key] else "-"
                    for c in cs
                )

            kv = " / ".join(_f((ctx.get(c) or {}).get("kv_bytes", 0) / 2**20, ".2f") for c in cs)
            out.append(
                f"| {name} | {'onnxruntime' if fmt == 'onnx' else 'llama.cpp'} ({sp.get('kv_cache')}) | "
                f"{col('decode_tok_s', ctx, '.0f')} | {ratio('decode_tok_s')} | {col('peak_rss_mb', ctx, '.0f')} | "
                f"{ratio('peak_rss_mb')} | {kv} |"
            )
    return out


def write_results(run: Run, rows: dict[str, dict], meta: dict) -> None:
    run.out.mkdir(parents=True, exist_ok=True)
    (run.out / "results.json").write_text(json.dumps({**meta, "students": rows}, indent=1) + "\n")
    (run.out / "results.md").write_text(markdown(rows, meta))


def resolve_student(item: str) -> Student:
    p = Path(item)
    if p.suffix == ".json":
        return Student(p.stem, p)
    path = SPECS / f"{item}.json"
    if not path.is_file():
        have = ", ".join(sorted(q.stem for q in SPECS.glob("*.json")))
        raise SystemExit(f"no student spec {path} (have: {have})")
    return Student(item, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "bench-out" / "student_tradeoff"))
    ap.add_argument("--students", default=",".join(DEFAULT_STUDENTS),
                    help="names in benchmarks/students/ or JSON paths")
    ap.add_argument("--stages", default=",".join(STAGES),
                    help=f"subset of {','.join(STAGES)} (distill always runs)")
    ap.add_argument("--steps", type=int, default=60, help="distillation steps (the same for every student)")
    ap.add_argument("--seed", type=int, default=0, help="training seed (batch order, router/expert noise)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch / runtime threads (1 is fastest on a busy machine)")
    ap.add_argument("--eval-seqs", type=int, default=0, help="held-out sequences for ppl@256 (0 = all)")
    ap.add_argument("--ctx", type=int, default=512, help="chunk length of the long-context and int4 checks")
    ap.add_argument("--chunks", type=int, default=64,
                    help="chunks of --ctx tokens (scored on their second half)")
    ap.add_argument("--method", default="rtn", choices=("rtn", "gptq"), help="int4 quantization method")
    ap.add_argument("--retrain", action="store_true", help="distill even when a matching student exists")
    ap.add_argument("--bench-threads", type=int, default=2, help="runtime threads in the speed stage")
    args = ap.parse_args(argv)  # fmt: skip

    import torch

    torch.set_num_threads(args.threads)
    unknown = set(args.stages.split(",")) - set(STAGES)
    if unknown:
        raise SystemExit(f"unknown stage(s) {', '.join(sorted(unknown))} (have {', '.join(STAGES)})")
    stages = ["distill", *[s for s in STAGES if s in args.stages.split(",") and s != "distill"]]
    run = Run(
        out=Path(args.out), steps=args.steps, seed=args.seed, threads=args.threads,
        eval_seqs=args.eval_seqs or None,
        ctx=args.ctx, chunks=args.chunks, method=args.method, retrain=args.retrain, log=log,
        bench_threads=args.bench_threads,
    )  # fmt: skip
    students = [resolve_student(x) for x in args.students.split(",") if x]
    meta = {
        "teacher": TEACHER,
        "steps": args.steps,
        "seed": args.seed,
        "threads": args.threads,
        "load_start": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    old = run.out / "results.json"
    rows: dict[str, dict] = {}
    if old.is_file():  # keep other students' rows from an earlier run with the same training
        prev = json.loads(old.read_text())
        if (prev.get("steps"), prev.get("seed", 0)) == (args.steps, args.seed):
            rows = prev.get("students", {})
    for s in students:
        row: dict[str, Any] = {"spec_file": str(s.spec_path)}
        timings = {}
        for name in stages:
            t0 = time.perf_counter()
            log(f"{s.name}: {name}")
            STAGES[name](run, s, row)
            timings[name] = round(time.perf_counter() - t0, 1)
        row["stage_seconds"] = timings
        row["load_after"] = round(os.getloadavg()[0], 2)
        if row["distill"]["reused"]:  # same weights: sections of stages not rerun now stay valid
            row = {**{k: v for k, v in rows.get(s.name, {}).items() if k in STAGES}, **row}
        rows[s.name] = row
        write_results(run, rows, meta)
    md = (run.out / "results.md").read_text()
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
