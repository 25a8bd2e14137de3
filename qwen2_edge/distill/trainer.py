"""The one training loop: CE-only pre-training (the built-in teacher) and knowledge distillation.

loss = alpha * CE + (1 - alpha) * tau^2 * KL(p_T/tau || p_S/tau) + aux_weight * load-balance (MoE).
alpha = 1 with no teacher is plain language-model training. AdamW, linear warm-up then cosine decay,
gradient accumulation, fp32 or bf16 autocast, a fixed seed, checkpoints every N steps with exact resume
(batches are a pure function of the step, see data.batch_indices), and DistributedDataParallel when
torch.distributed is initialized (torchrun): each rank takes its own slice of every global batch.
Checkpoints are safetensors + JSON, never pickle.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..errors import UserError
from ..fsutil import atomic_dir
from .config import TrainConfig
from .data import PackedData, batch_indices
from .losses import coefficient_of_variation, distill_kl, expert_load, load_balancing_loss, next_token_ce

STATE_DIR = "trainer_state"


@dataclass
class Evaluation:
    step: int
    ppl: float
    ce: float
    kl: float | None  # KL(p_T || p_S) at tau = 1, per token, when a teacher is given
    expert_load: dict[int, list[float]]  # MoE layer index -> share of routed slots per expert
    expert_cv: dict[int, float]  # MoE layer index -> coefficient of variation of the load

    @property
    def mean_cv(self) -> float | None:
        return sum(self.expert_cv.values()) / len(self.expert_cv) if self.expert_cv else None


@dataclass
class TrainResult:
    steps: int
    seconds: float
    tokens: int  # training tokens seen (all ranks)
    history: list[dict[str, Any]] = field(default_factory=list)
    evaluations: list[Evaluation] = field(default_factory=list)

    @property
    def final(self) -> Evaluation:
        return self.evaluations[-1]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.lr * min_lr_ratio at cfg.steps."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _moe_top_k(model) -> int | None:
    cfg = model.config
    return int(cfg.num_experts_per_tok) if getattr(cfg, "model_type", "") == "qwen2_moe" else None


def _moe_layers(model) -> list[int]:
    """Layer indices whose FFN is a routed MoE block (the order router_logits come back in)."""
    return [i for i, layer in enumerate(model.model.layers) if hasattr(layer.mlp, "gate")]


def _autocast(cfg: TrainConfig):
    if cfg.dtype == "bf16":
        return torch.autocast(device_type=torch.device(cfg.device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _forward(model, ids: torch.Tensor, moe: bool):
    """(logits, router_logits per MoE layer or ())."""
    if moe:
        out = model(input_ids=ids, output_router_logits=True, use_cache=False)
        return out.logits, tuple(out.router_logits or ())
    return model(input_ids=ids, use_cache=False).logits, ()


def evaluate(
    model, heldout: torch.Tensor, cfg: TrainConfig, teacher=None, step: int = 0, batch_size: int | None = None
) -> Evaluation:
    """Held-out perplexity, KL to the teacher (tau = 1) and per-expert load, summed over all ranks."""
    rank, world = _dist()
    top_k = _moe_top_k(model)
    layers = _moe_layers(model) if top_k else []
    seqs = heldout if cfg.eval_max_seqs is None else heldout[: cfg.eval_max_seqs]
    mine = seqs[rank::world]
    bs = batch_size or cfg.batch_size
    dev = torch.device(cfg.device)
    ce_sum = torch.zeros((), dtype=torch.float64, device=dev)
    kl_sum = torch.zeros((), dtype=torch.float64, device=dev)
    n_tok = torch.zeros((), dtype=torch.float64, device=dev)
    counts = torch.zeros(
        len(layers), model.config.num_experts if top_k else 1, dtype=torch.float64, device=dev
    )
    was_training = model.training
    model.eval()
    with torch.no_grad(), _autocast(cfg):
        for i in range(0, len(mine), bs):
            ids = mine[i : i + bs].to(dev)
            logits, routers = _forward(model, ids, bool(top_k))
            n = ids[:, 1:].numel()
            ce_sum += next_token_ce(logits, ids).double() * n
            n_tok += n
            if teacher is not None:
                t_logits = teacher(input_ids=ids, use_cache=False).logits
                kl_sum += distill_kl(logits, t_logits, 1.0).double() * n
            for j, r in enumerate(routers):
                counts[j] += expert_load(r, top_k).double() * r.shape[0]
    model.train(was_training)
    if world > 1:
        for t in (ce_sum, kl_sum, n_tok, counts):
            dist.all_reduce(t)
    ce = float(ce_sum / n_tok)
    loads = {}
    cvs = {}
    for j, layer in enumerate(layers):
        load = counts[j] / counts[j].sum()
        loads[layer] = [round(float(x), 4) for x in load]
        cvs[layer] = coefficient_of_variation(load)
    return Evaluation(
        step=step,
        ppl=math.exp(ce),
        ce=ce,
        kl=float(kl_sum / n_tok) if teacher is not None else None,
        expert_load=loads,
        expert_cv=cvs,
    )


def train(
    model,
    data: PackedData,
    cfg: TrainConfig,
    teacher=None,
    ckpt_dir: str | Path | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train `model` in place (a transformers Qwen2 / Qwen2-MoE causal LM); return losses and evaluations."""
    cfg.validate()
    if cfg.alpha < 1.0 and teacher is None:
        raise UserError("alpha < 1 needs a teacher")
    rank, world = _dist()
    dev = torch.device(cfg.device)
    say = log if log is not None else (lambda m: print(m, file=sys.stderr))
    say = say if rank == 0 else (lambda m: None)
    top_k = _moe_top_k(model)
    model.to(dev).train()
    if teacher is not None:
        teacher.to(dev).eval().requires_grad_(False)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=cfg.betas,
        foreach=True,
    )
    result = TrainResult(steps=0, seconds=0.0, tokens=0)
    start = 0
    state_dir = Path(ckpt_dir) / STATE_DIR if ckpt_dir is not None else None
    if resume:
        if state_dir is None or not (state_dir / "state.json").is_file():
            raise UserError("nothing to resume (no trainer checkpoint)", state_dir or ckpt_dir)
        start = _load_state(state_dir, model, opt, result, cfg, dev)
        say(f"resumed from step {start} ({state_dir})")
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None, find_unused_parameters=bool(top_k)
        )
    global_batch = cfg.batch_size * world
    tokens_per_step = global_batch * cfg.grad_accum * data.seq_len
    bar = None
    if cfg.progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(
            total=cfg.steps, initial=start, desc="train", unit="step", file=sys.stderr, dynamic_ncols=True
        )
    if cfg.eval_at_start and start == 0:
        ev = evaluate(model, data.heldout, cfg, teacher, 0)
        result.evaluations.append(ev)
        say(_eval_line(ev))
    t0 = time.perf_counter()
    end = cfg.steps if cfg.stop_after is None else min(cfg.steps, cfg.stop_after)
    for step in range(start, end):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        sums = {"loss": 0.0, "ce": 0.0, "kl": 0.0, "aux": 0.0}
        for micro in range(cfg.grad_accum):
            position = (step * cfg.grad_accum + micro) * global_batch + rank * cfg.batch_size
            ids = data.train[batch_indices(len(data.train), cfg.batch_size, position, cfg.seed)].to(dev)
            sync = micro == cfg.grad_accum - 1 or world == 1
            ctx = contextlib.nullcontext() if sync else net.no_sync()
            with ctx:
                with _autocast(cfg):
                    logits, routers = _forward(net, ids, bool(top_k))
                    ce = next_token_ce(logits, ids)
                    loss = cfg.alpha * ce
                    kl = torch.zeros(())
                    if teacher is not None and cfg.alpha < 1.0:
                        with torch.no_grad():
                            t_logits = teacher(input_ids=ids, use_cache=False).logits
                        kl = distill_kl(logits, t_logits, cfg.tau)
                        loss = loss + (1 - cfg.alpha) * kl
                    aux = torch.zeros(())
                    if routers and cfg.aux_weight > 0:
                        aux = sum(load_balancing_loss(r, top_k) for r in routers) / len(routers)
                        loss = loss + cfg.aux_weight * aux
                (loss / cfg.grad_accum).backward()
            for k, v in (("loss", loss), ("ce", ce), ("kl", kl), ("aux", aux)):
                sums[k] += float(v.detach()) / cfg.grad_accum
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        done = step + 1
        elapsed = time.perf_counter() - t0
        result.tokens += tokens_per_step
        tps = (done - start) * tokens_per_step / max(elapsed, 1e-9)
        if world > 1:  # report the mean loss over ranks (each rank saw a different slice)
            t = torch.tensor([sums[k] for k in ("loss", "ce", "kl", "aux")], dtype=torch.float64, device=dev)
            dist.all_reduce(t)
            sums = dict(zip(("loss", "ce", "kl", "aux"), (t / world).tolist(), strict=True))
        row = {"step": done, "lr": opt.param_groups[0]["lr"], "tok_s": round(tps, 1), **sums}
        if done % cfg.log_every == 0 or done == cfg.steps or done == start + 1:
            result.history.append(row)
        if bar is not None:
            post = {"loss": f"{sums['loss']:.3f}", "ce": f"{sums['ce']:.3f}"}
            if teacher is not None:
                post["kl"] = f"{sums['kl']:.3f}"
            if top_k:
                post["aux"] = f"{sums['aux']:.3f}"
            post["tok/s"] = f"{tps:.0f}"
            bar.set_postfix(post, refresh=False)
            bar.update(1)
        if cfg.eval_every and done % cfg.eval_every == 0 and done != cfg.steps:
            ev = evaluate(model, data.heldout, cfg, teacher, done)
            result.evaluations.append(ev)
            say(_eval_line(ev))
        stopping = done == end and end < cfg.steps
        if (
            state_dir is not None
            and done != cfg.steps
            and (stopping or (cfg.ckpt_every and done % cfg.ckpt_every == 0))
        ):
            _save_state(state_dir, model, opt, result, cfg, done, result.seconds + elapsed)
    if bar is not None:
        bar.close()
    result.steps = end
    result.seconds += time.perf_counter() - t0
    ev = evaluate(model, data.heldout, cfg, teacher, end)
    result.evaluations.append(ev)
    say(_eval_line(ev))
    return result


def weight_digest(model) -> str:
    """SHA-256 of every parameter's bytes, in name order: equal digests = bit-identical weights."""
    import hashlib

    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def rank_digests(model) -> list[str]:
    """Every rank's weight digest (one entry when not distributed)."""
    d = weight_digest(model)
    rank, world = _dist()
    if world == 1:
        return [d]
    out: list[str] = [""] * world
    dist.all_gather_object(out, d)
    return out


def _eval_line(ev: Evaluation) -> str:
    s = f"step {ev.step}: held-out ppl {ev.ppl:.2f}"
    if ev.kl is not None:
        s += f", KL to teacher {ev.kl:.4f}"
    for layer, load in ev.expert_load.items():
        s += f"; layer {layer} expert load {load} (CV {ev.expert_cv[layer]:.3f})"
    return s


def _save_state(
    state_dir: Path, model, opt, result: TrainResult, cfg: TrainConfig, step: int, seconds: float
) -> None:
    """Weights, AdamW moments and progress as safetensors + JSON (rank 0 writes; ranks hold equal copies)."""
    rank, world = _dist()
    if rank == 0:
        from safetensors.torch import save_file

        with atomic_dir(state_dir, force=True) as tmp:
            # clone: tied embeddings share storage, which safetensors refuses to write twice
            save_file(
                {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()},
                str(tmp / "model.safetensors"),
            )
            sd = opt.state_dict()
            tensors = {}
            for idx, st in sd["state"].items():
                for key, val in st.items():
                    tensors[f"{idx}.{key}"] = torch.as_tensor(val).detach().cpu().clone().contiguous()
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            (tmp / "state.json").write_text(
                json.dumps(
                    {
                        "step": step,
                        "seconds": seconds,
                        "tokens": result.tokens,
                        "param_groups": sd["param_groups"],
                        "history": result.history,
                        "config": asdict(cfg),
                    },
                    indent=1,
                )
            )
    if world > 1:
        dist.barrier()


def _load_state(state_dir: Path, model, opt, result: TrainResult, cfg: TrainConfig, dev: torch.device) -> int:
    from safetensors.torch import load_file

    state = json.loads((state_dir / "state.json").read_text())
    # Resuming is exact only with the settings that fixed the batch order and the schedule.
    saved = state.get("config", {})
    now = asdict(cfg)
    differ = [
        k for k in ("steps", "batch_size", "grad_accum", "seed", "lr", "warmup") if saved.get(k) != now[k]
    ]
    if differ:
        diffs = ", ".join(f"{k} {saved.get(k)} -> {now[k]}" for k in differ)
        raise UserError(f"cannot resume with different training settings ({diffs})", state_dir)
    weights = load_file(str(state_dir / "model.safetensors"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or [k for k in missing if not k.endswith("lm_head.weight")]:
        raise UserError(
            f"trainer checkpoint does not match the student (missing {missing[:3]}, unexpected {unexpected[:3]})",
            state_dir,
        )
    tensors = load_file(str(state_dir / "optimizer.safetensors"))
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        idx, key = name.split(".", 1)
        opt_state.setdefault(int(idx), {})[key] = t.to(dev) if key != "step" else t
    opt.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    result.seconds = float(state["seconds"])
    result.tokens = int(state["tokens"])
    result.history = list(state["history"])
    return int(state["step"])
