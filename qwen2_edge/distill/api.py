"""`distill(...)`: the library entry point behind `qwen2-edge distill` (and the demo pipeline).

Loads the teacher (any Qwen2 / Qwen2-MoE checkpoint or `builtin:teacher`), builds the student from a
StudentSpec initialized from the teacher, tokenizes the data with the teacher's tokenizer, trains with the
shared trainer, and writes an HF checkpoint (float32 safetensors + the teacher's tokenizer files + a
`distill_report.json`) atomically. Under torchrun each rank trains its slice; rank 0 writes.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch

from ..errors import UserError
from ..exporters.estimate import tokenizer_bytes
from ..fsutil import atomic_dir, check_free_space, check_output, check_writable
from .config import DEMO_CONFIG, DEMO_SEQ_LEN, TrainConfig
from .data import PackedData, pack_files, pack_texts
from .student import DEFAULT_STUDENT, StudentSpec, build_student, resolve_config
from .trainer import TrainResult, evaluate, rank_digests, train

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
)
REPORT = "distill_report.json"
BUILTIN_CORPUS = "builtin:corpus"


def load_teacher(path: str | Path):
    """(checkpoint, transformers model in float32, eval mode) for a checkpoint dir or builtin:NAME."""
    from ..model.checkpoint import open_checkpoint
    from ..model.families import transformers_class

    ckpt = open_checkpoint(path, need_tokenizer=True)
    _quiet_transformers()
    cls = transformers_class(ckpt.spec.family_row.model_class)
    model = cls.from_pretrained(str(ckpt.path), dtype=torch.float32).eval()
    return ckpt, model


def _quiet_transformers() -> None:
    """Our own progress bar is the one to watch; transformers' per-load/save bars only add noise."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_data(
    ckpt, data_files: Sequence[str | Path] | None, seq_len: int, heldout_fraction: float
) -> PackedData:
    """Token sequences from text files (or the built-in corpus), tokenized with the teacher's tokenizer."""
    from ..model.tokenizer import TextTokenizer

    tok = TextTokenizer(ckpt.path)
    if tok.vocab_size > ckpt.spec.vocab_size:
        raise UserError(
            f"tokenizer has {tok.vocab_size} entries but the model only {ckpt.spec.vocab_size} embedding rows",
            ckpt.path / "tokenizer.json",
        )
    eos = tok.token_id("<|endoftext|>")

    def encode(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in tok.tok.encode_batch(texts, add_special_tokens=False)]

    if not data_files or [str(f) for f in data_files] == [BUILTIN_CORPUS]:
        from ..data import corpus

        return pack_texts(corpus.train_texts(), corpus.heldout_texts(), encode, seq_len, eos)
    return pack_files(data_files, encode, seq_len, eos, heldout_fraction)


def _setup_distributed(device: str) -> tuple[int, int, str]:
    """Join the torchrun process group (gloo on CPU, nccl on GPU); returns (rank, world, device)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def distill(
    teacher: str | Path,
    student: StudentSpec | str | Path | None,
    data_files: Sequence[str | Path] | None,
    out: str | Path,
    config: TrainConfig | None = None,
    seq_len: int = DEMO_SEQ_LEN,
    heldout_fraction: float = 0.05,
    force: bool = False,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Distill `teacher` into a student; write the HF checkpoint to `out` and return it.

    student: a StudentSpec, a JSON spec file, or None for DEFAULT_STUDENT. data_files: text files, or
    None / ["builtin:corpus"] for the built-in corpus. Trainer state goes to `<out>.ckpt/` every
    config.ckpt_every steps (what `resume` continues from) and is removed when the run completes.
    """
    import torch.distributed as dist

    cfg = config or replace(DEMO_CONFIG)
    rank, world, cfg.device = _setup_distributed(cfg.device)
    say = (log or (lambda m: None)) if rank == 0 else (lambda m: None)
    out = Path(out)
    if not resume:
        check_output(out, force, folder=True)
    else:
        check_writable(out.parent)
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda requested but no CUDA device is available")
    spec = (
        DEFAULT_STUDENT
        if student is None
        else student
        if isinstance(student, StudentSpec)
        else StudentSpec.from_json(student)
    )
    ckpt, t_model = load_teacher(teacher)
    resolve_config(spec, t_model.config.to_dict())  # a contradicting spec fails before tokenizing data
    data = load_data(ckpt, data_files, seq_len, heldout_fraction)
    say(
        f"data: {len(data.train)} training and {len(data.heldout)} held-out sequences of {seq_len} tokens"
        + (f" on {world} processes" if world > 1 else "")
    )
    s_model, init = build_student(spec, t_model, seed=cfg.seed)
    if getattr(s_model.config, "model_type", "") == "qwen2_moe":
        s_model.config.router_aux_loss_coef = cfg.aux_weight  # what transformers uses if it trains it later
    n_params = sum(p.numel() for p in s_model.parameters())
    say(f"student: {s_model.config.architectures[0]}, {n_params:,} parameters; {init.summary()}")
    # Room for what training writes, before it starts: float32 weights, the tokenizer, and with trainer
    # checkpoints weights + two AdamW moments, twice while one replaces the other (fsutil.atomic_dir).
    state_bytes = 2 * 3 * 4 * n_params if cfg.ckpt_every else 0
    check_free_space(out.parent, 4 * n_params + tokenizer_bytes(ckpt.path) + state_bytes + 2**20)
    state_root = out.with_name(out.name + ".ckpt")
    result: TrainResult = train(
        s_model,
        data,
        cfg,
        teacher=t_model if cfg.alpha < 1 else None,
        ckpt_dir=state_root,
        resume=resume,
        log=say,
    )
    if cfg.alpha >= 1:  # CE-only runs still report their distance to the teacher
        result.evaluations[-1] = evaluate(s_model, data.heldout, cfg, t_model, result.steps)
    digests = rank_digests(s_model)  # DDP keeps replicas identical; this proves it on every run
    teacher_eval = evaluate(t_model.to(cfg.device), data.heldout, cfg, None, 0)
    if rank == 0:
        final = result.final
        report = {
            "teacher": str(teacher),
            "student_spec": spec.to_dict(),
            "student_parameters": n_params,
            "init": {"layer_map": init.layer_map, "summary": init.summary(), "sources": init.sources},
            "train_config": {k: v for k, v in vars(cfg).items()},
            "seq_len": seq_len,
            "processes": world,
            "rank_weight_digests": digests,
            "train_sequences": len(data.train),
            "heldout_sequences": len(data.heldout),
            "tokens_seen": result.tokens,
            "seconds": round(result.seconds, 1),
            "teacher_heldout_ppl": teacher_eval.ppl,
            "heldout_ppl": final.ppl,
            "heldout_kl_to_teacher": final.kl,
            "expert_load": {str(k): v for k, v in final.expert_load.items()},
            "expert_cv": {str(k): v for k, v in final.expert_cv.items()},
            "evaluations": [vars(e) for e in result.evaluations],
            "history": result.history,
        }
        with atomic_dir(out, force=True) as tmp:
            s_model.to("cpu").float().save_pretrained(tmp)
            for f in TOKENIZER_FILES:
                if (ckpt.path / f).is_file():
                    shutil.copy(ckpt.path / f, tmp / f)
            (tmp / REPORT).write_text(json.dumps(report, indent=1, default=str) + "\n")
        shutil.rmtree(state_root, ignore_errors=True)
        say(
            f"wrote {out}: held-out ppl {final.ppl:.2f} (teacher {teacher_eval.ppl:.2f})"
            + (f", KL to teacher {final.kl:.4f}" if final.kl is not None else "")
            + (f", mean expert-load CV {final.mean_cv:.3f}" if final.mean_cv is not None else "")
        )
    if world > 1:
        dist.barrier()
    if len(set(digests)) > 1:
        raise RuntimeError(f"ranks ended with different weights: {digests}")  # a bug, not bad input
    return out
