"""Training configuration (no heavy imports: the CLI reads its defaults from here)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError


@dataclass
class TrainConfig:
    steps: int = 200
    batch_size: int = 8  # sequences per micro-batch per process
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup: int = 20
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    alpha: float = 0.5  # weight of CE; 1.0 = CE only (no teacher needed)
    tau: float = 2.0
    aux_weight: float = 0.01  # router load-balancing loss weight (MoE students only)
    dtype: str = "fp32"  # "fp32" or "bf16" (autocast; master weights stay fp32)
    seed: int = 0
    device: str = "cpu"
    eval_every: int = 0  # 0: only at the end
    eval_at_start: bool = False  # also evaluate the initial weights (step 0), e.g. the teacher-seeded student
    eval_max_seqs: int | None = None  # cap on held-out sequences per evaluation
    ckpt_every: int = 0  # 0: no intermediate checkpoints
    log_every: int = 10
    stop_after: int | None = None  # end early after this step with a checkpoint (time-sliced jobs, tests)
    progress: bool = True

    def validate(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise UserError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.tau <= 0:
            raise UserError(f"tau must be positive, got {self.tau}")
        if self.dtype not in ("fp32", "bf16"):
            raise UserError(f"dtype must be fp32 or bf16, got {self.dtype!r}")
        for name in ("steps", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")


# The demo's distillation (DEFAULT_STUDENT from builtin:teacher on the built-in corpus): ~2-3 minutes on
# 2 shared CPU cores. `qwen2-edge distill` takes its defaults from here.
DEMO_CONFIG = TrainConfig(
    steps=60,
    batch_size=8,
    lr=2e-3,
    warmup=6,
    alpha=0.2,
    tau=2.0,
    aux_weight=0.02,
    eval_max_seqs=64,
    eval_at_start=True,
)
DEMO_SEQ_LEN = 256
