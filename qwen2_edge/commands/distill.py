"""qwen2-edge distill: train a (MoE-hybrid, windowed) student from a teacher; one process or torchrun."""

from __future__ import annotations

import argparse
import sys

HELP = "distill a student (Qwen2 or Qwen2-MoE hybrid, sliding-window layers) from a teacher"

# flag -> StudentSpec field; flags override the JSON spec (or the default student)
_SPEC_INTS = ("layers", "hidden", "heads", "kv_heads", "intermediate", "experts", "top_k",
              "expert_intermediate", "shared_intermediate", "window",
              "max_position_embeddings")  # fmt: skip
_SPEC_LISTS = ("moe_layers", "window_layers", "init_layers")


def _int_list(s: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in s.split(",") if x.strip() != "")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def _idle_cpus() -> int:
    """CPUs not already busy, split over torchrun's processes, at least 1.

    Measured on a shared 2-core machine (benchmarks/distill_throughput.py): with ~8 other processes
    running, 2 OpenMP threads ran at 0.09x the speed of 1 (threads spin waiting for each other), while on
    an idle machine more threads help; the load average tells the two apart.
    """
    import os

    n = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    world = max(1, int(os.environ.get("WORLD_SIZE", "1")))
    return max(1, int(n - busy + 0.5) // world)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--teacher", default="builtin:teacher", help="teacher checkpoint dir (default builtin:teacher)"
    )
    p.add_argument(
        "--student", default="default", help="student spec JSON file, or 'default' (the demo MoE-hybrid)"
    )
    p.add_argument("--data", nargs="+", default=["builtin:corpus"], metavar="FILE",
                   help="UTF-8 text files (default builtin:corpus: the stdlib corpus with its held-out modules)")  # fmt: skip
    p.add_argument("--out", required=True, help="output checkpoint directory")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.add_argument(
        "--resume", action="store_true", help="continue from <out>.ckpt/ (written every --ckpt-every steps)"
    )
    s = p.add_argument_group("student (overrides the spec; unset = teacher's value)")
    s.add_argument("--layers", type=int)
    s.add_argument("--hidden", type=int)
    s.add_argument("--heads", type=int)
    s.add_argument("--kv-heads", type=int)
    s.add_argument("--intermediate", type=int, help="dense FFN size")
    s.add_argument("--moe-layers", type=_int_list, help="layers with routed experts, e.g. 0,2 ('' = none)")
    s.add_argument("--experts", type=int, help="routed experts per MoE layer")
    s.add_argument("--top-k", type=int)
    s.add_argument("--expert-intermediate", type=int)
    s.add_argument("--shared-intermediate", type=int, help="shared expert FFN size")
    s.add_argument(
        "--norm-topk-prob",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="renormalize top-k weights",
    )
    s.add_argument(
        "--shared-gate",
        choices=("learned", "constant"),
        help="shared-expert gate: learned sigmoid, or constant 1/2 (exactly encodable in GGUF)",
    )
    s.add_argument("--window", type=int, help="sliding window w (keys per query) on --window-layers")
    s.add_argument("--window-layers", type=_int_list)
    s.add_argument(
        "--max-position-embeddings",
        type=int,
        help="RoPE positions (context limit) the student declares; beyond the teacher's they are untrained",
    )
    s.add_argument(
        "--init-layers", type=_int_list, help="teacher layer to initialize each student layer from"
    )
    from ..distill.config import DEMO_CONFIG as D
    from ..distill.config import DEMO_SEQ_LEN

    t = p.add_argument_group("training (defaults: the demo's ~2-3 minute CPU run)")
    t.add_argument("--steps", type=int, default=D.steps)
    t.add_argument(
        "--batch-size", type=int, default=D.batch_size, help="sequences per micro-batch per process"
    )
    t.add_argument("--grad-accum", type=int, default=D.grad_accum)
    t.add_argument("--seq-len", type=int, default=DEMO_SEQ_LEN)
    t.add_argument("--lr", type=float, default=D.lr)
    t.add_argument("--warmup", type=int, default=D.warmup)
    t.add_argument("--min-lr-ratio", type=float, default=D.min_lr_ratio)
    t.add_argument("--weight-decay", type=float, default=D.weight_decay)
    t.add_argument(
        "--alpha", type=float, default=D.alpha, help="weight of cross-entropy; 1-alpha on tau^2*KL"
    )
    t.add_argument("--tau", type=float, default=D.tau, help="distillation temperature")
    t.add_argument("--aux-weight", type=float, default=D.aux_weight, help="router load-balancing loss weight")
    t.add_argument("--dtype", choices=("fp32", "bf16"), default=D.dtype)
    t.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    t.add_argument("--seed", type=int, default=D.seed)
    t.add_argument("--heldout-fraction", type=float, default=0.05)
    t.add_argument(
        "--eval-every", type=int, default=D.eval_every, help="held-out ppl/KL/expert load every N steps"
    )
    t.add_argument(
        "--eval-max-seqs",
        type=int,
        default=D.eval_max_seqs,
        help="held-out sequences per evaluation (0 = all)",
    )
    t.add_argument(
        "--ckpt-every", type=int, default=0, help="trainer checkpoint every N steps (for --resume)"
    )
    t.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads per process (0 = the CPUs not already busy)"
    )
    t.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..distill.api import distill
    from ..distill.config import TrainConfig
    from ..distill.student import DEFAULT_STUDENT, StudentSpec

    torch.set_num_threads(args.threads or _idle_cpus())
    spec = DEFAULT_STUDENT if args.student == "default" else StudentSpec.from_json(args.student)
    over = {k: getattr(args, k) for k in (*_SPEC_INTS, *_SPEC_LISTS, "norm_topk_prob", "shared_gate")}
    over["num_experts"] = over.pop("experts")
    spec = spec.with_overrides(**over)
    cfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        warmup=args.warmup,
        min_lr_ratio=args.min_lr_ratio,
        weight_decay=args.weight_decay,
        alpha=args.alpha,
        tau=args.tau,
        aux_weight=args.aux_weight,
        dtype=args.dtype,
        seed=args.seed,
        device=args.device,
        eval_every=args.eval_every,
        eval_at_start=True,
        eval_max_seqs=args.eval_max_seqs or None,
        ckpt_every=args.ckpt_every,
        progress=not args.no_progress,
    )
    distill(
        args.teacher,
        spec,
        args.data,
        args.out,
        cfg,
        seq_len=args.seq_len,
        heldout_fraction=args.heldout_fraction,
        force=args.force,
        resume=args.resume,
        log=lambda m: print(m, file=sys.stderr, flush=True),
    )
    return 0
