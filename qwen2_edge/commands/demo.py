"""qwen2-edge demo: the whole pipeline on the built-in teacher, then one prompt through three runtimes."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HELP = "run the whole pipeline on the built-in teacher and compare generations (about 10 minutes on 2 cores)"
PROMPT = "def read_config(path):\n    "


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .pipeline import add_common

    p.add_argument("--out", default="qwen2-edge-demo", help="output folder (default ./qwen2-edge-demo)")
    p.add_argument("--steps", type=int, default=None, help="distillation steps (default: the demo's)")
    p.add_argument("--prompt", default=PROMPT)
    p.add_argument("--max-new-tokens", type=int, default=24)
    add_common(p)
    p.set_defaults(quants="int8,int4")


def run(args: argparse.Namespace) -> int:
    from ..pipeline.preflight import check_room, locked_folder
    from ..pipeline.run import plan_artifacts, run_pipeline
    from .pipeline import config_from_args

    t0 = time.perf_counter()
    cfg = config_from_args(args, teacher="builtin:teacher", model=None, student=None, data=[])
    check_room(cfg, plan_artifacts(cfg))
    with locked_folder(cfg, "demo"):
        result = run_pipeline(cfg)
        show(args, cfg, result)  # the artifacts are read while the folder is held
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s; report: {cfg.out / 'report.html'}")
    return 0 if result.check.get("passed", True) else 1


def show(args: argparse.Namespace, cfg, result) -> None:
    from ..pipeline.report import summary_rows, text_table
    from ..runtimes.options import RuntimeOptions
    from ..runtimes.registry import open_session

    print()
    print(text_table(summary_rows(result)))
    tvs = result.teacher_vs_student
    if tvs:
        print(
            f"\nstudent vs teacher on held-out text: teacher ppl {tvs.get('teacher_ppl', 0):.2f}, "
            f"student ppl {tvs.get('student_ppl', 0):.2f}, KLD {tvs.get('kld_mean', 0):.3f}, top-1 {tvs.get('top1_agreement', 0):.3f}"
        )
    print(f"\nsame prompt, greedy, {args.max_new_tokens} tokens: {args.prompt!r}")
    shown = [("float student (transformers)", result.student, None)]
    for a in result.artifacts:
        if a.quant in ("int4", "q4_0"):
            runtime = "onnxruntime" if a.format == "onnx" else "llama.cpp"
            shown.append((f"{a.name} ({runtime})", a.path, cfg.kv_cache))
    for label, path, kv_cache in shown:
        with open_session(Path(path), options=RuntimeOptions(cfg.threads, kv_cache)) as s:
            label += f", KV cache {s.kv_cache}"
            ids = s.encode(args.prompt)
            text = s.decode(s.greedy(ids, args.max_new_tokens))
        print(f"--- {label}\n{args.prompt}{text}")
