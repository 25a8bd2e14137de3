"""qwen2-edge pipeline: distill -> quantize -> export ONNX + GGUF -> check -> bench -> report."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_kv_cache, kv_cache_arg

HELP = "distill, quantize, export, validate and benchmark in one command (stages cached)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--teacher", help="teacher checkpoint (or builtin:teacher) to distill a student from")
    src.add_argument("--model", help="start from this float student checkpoint (no distillation)")
    p.add_argument(
        "--student", help="student spec JSON (default: a 2-layer MoE-hybrid, sliding-window student)"
    )
    p.add_argument("--data", nargs="*", default=[], help="training text files (default: the built-in corpus)")
    p.add_argument("--steps", type=int, default=None, help="distillation steps")
    p.add_argument(
        "--out", required=True, help="output folder (rerunning resumes; cached stages are skipped)"
    )
    add_common(p)


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--formats", default="onnx,gguf", help="comma list: onnx,gguf")
    p.add_argument(
        "--quants", default="int8,int4", help="comma list: f32,f16,int8,int4,int4_asym,q4_k_m,q5_k_m,q6_k,..."
    )
    p.add_argument("--method", default="rtn", help="quantization method: rtn or gptq")
    p.add_argument("--policy", default="default", help="precision policy")
    p.add_argument("--ctx", type=int, default=None, help="check context length (default: > sliding window)")
    p.add_argument("--chunks", type=int, default=4, help="check chunks of held-out text")
    p.add_argument("--no-bench", action="store_true", help="skip benchmarking")
    p.add_argument("--threads", type=int, default=None)
    add_kv_cache(
        p,
        "KV cache the artifacts are deployed with: benchmarked at it and checked at it beside the gated "
        "f32-cache check (default: each runtime's own)",
    )
    p.add_argument(
        "--force", action="store_true", help="use a non-empty foreign folder / recompute every stage"
    )


def config_from_args(args: argparse.Namespace, **overrides):
    from ..pipeline.config import PipelineConfig

    kw = dict(
        out=Path(args.out),
        model=getattr(args, "model", None),
        teacher=getattr(args, "teacher", None),
        student=getattr(args, "student", None),
        data=list(getattr(args, "data", []) or []),
        distill_steps=getattr(args, "steps", None),
        formats=tuple(f for f in args.formats.split(",") if f),
        quants=tuple(q for q in args.quants.split(",") if q),
        method=args.method,
        policy=args.policy,
        check_ctx=args.ctx,
        check_chunks=args.chunks,
        bench=not args.no_bench,
        threads=args.threads,
        kv_cache=kv_cache_arg(args),
        force=args.force,
    )
    kw.update(overrides)
    return PipelineConfig(**kw)


def run(args: argparse.Namespace) -> int:
    from ..pipeline.preflight import check_room, locked_folder
    from ..pipeline.report import summary_rows, text_table
    from ..pipeline.run import plan_artifacts, run_pipeline

    cfg = config_from_args(args)
    plan = plan_artifacts(cfg)  # bad formats, quants or --kv-cache: refused before the output folder is touched
    check_room(cfg, plan)  # a folder that cannot be written or is too small: refused before any stage
    with locked_folder(cfg, "pipeline"):
        result = run_pipeline(cfg)
    print()
    print(text_table(summary_rows(result)))
    print(
        f"\nreport: {cfg.out / 'report.html'}  summary: {cfg.out / 'summary.md'}  json: {cfg.out / 'report.json'}"
    )
    return 0 if result.check.get("passed", True) else 1
