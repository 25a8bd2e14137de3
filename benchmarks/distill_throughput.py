"""Distillation throughput of the default student from builtin:teacher: torch threads x fp32/bf16.

    PYTHONPATH=. python benchmarks/distill_throughput.py [--steps 6]

Runs every configuration in one process, one after another, and prints tokens/s side by side (the
ratio between rows is the result; absolute numbers depend on what else the machine is running).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from qwen2_edge.distill.api import load_data, load_teacher
from qwen2_edge.distill.config import DEMO_CONFIG
from qwen2_edge.distill.student import DEFAULT_STUDENT, build_student
from qwen2_edge.distill.trainer import train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=4)
    args = ap.parse_args()
    ckpt, teacher = load_teacher("builtin:teacher")
    data = load_data(ckpt, None, 256, 0.05)
    rows = []
    for threads in (1, 2):
        for dtype in ("fp32", "bf16"):
            torch.set_num_threads(threads)
            cfg = replace(
                DEMO_CONFIG, steps=args.steps, batch_size=args.batch_size, dtype=dtype, progress=False,
                eval_at_start=False, eval_max_seqs=1, log_every=1,
            )  # fmt: skip
            student, _ = build_student(DEFAULT_STUDENT, teacher, seed=0)
            res = train(student, data, cfg, teacher=teacher, log=lambda m: None)
            rows.append((threads, dtype, res.history[-1]["tok_s"]))
    base = rows[0][2]
    print(f"{'threads':>7} {'dtype':>5} {'tok/s':>8} {'vs 1 thread fp32':>17}")
    for threads, dtype, tps in rows:
        print(f"{threads:>7} {dtype:>5} {tps:>8.0f} {tps / base:>16.2f}x")


if __name__ == "__main__":
    main()
