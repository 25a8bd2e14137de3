"""Distillation from the built-in teacher: KD beats CE-only, load balancing balances, the CLI's output is a
real checkpoint, resume is exact, bad specs are one-line errors, and 2-process DDP keeps ranks identical.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from qwen2_edge.cli import main
from qwen2_edge.data import corpus
from qwen2_edge.distill.api import load_data, load_teacher
from qwen2_edge.distill.config import TrainConfig
from qwen2_edge.distill.student import DEFAULT_STUDENT, StudentSpec, build_student, resolve_config
from qwen2_edge.distill.trainer import train, weight_digest
from qwen2_edge.errors import UserError

ROOT = Path(__file__).resolve().parent.parent

# Small versions of the full-size runs in the README: the default MoE-hybrid student (2 layers, layer 0
# MoE 4 experts top-2 + shared expert with a 64-token window, layer 1 dense full attention).
SMALL = TrainConfig(
    steps=20, batch_size=4, lr=2e-3, warmup=2, eval_max_seqs=24, progress=False, log_every=1, seed=0
)


@pytest.fixture(scope="module")
def setup():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # faster on a shared 2-core machine, and bit-reproducible
    ckpt, teacher = load_teacher("builtin:teacher")
    data = load_data(ckpt, None, seq_len=128, heldout_fraction=0.05)  # built-in corpus, held-out modules
    yield ckpt, teacher, data
    torch.set_num_threads(threads)


def _run(setup, cfg: TrainConfig, spec=DEFAULT_STUDENT):
    _, teacher, data = setup
    student, _ = build_student(spec, teacher, seed=0)
    return train(student, data, cfg, teacher=teacher if cfg.alpha < 1 else None, log=lambda m: None)


@pytest.fixture(scope="module")
def runs(setup):
    return {
        "kd": _run(setup, replace(SMALL, alpha=0.2, aux_weight=0.1)),
        "ce": _run(setup, replace(SMALL, alpha=1.0, aux_weight=0.1)),
        "ce_noaux": _run(setup, replace(SMALL, alpha=1.0, aux_weight=0.0)),
    }


def test_distillation_beats_cross_entropy_alone(runs):
    kd, ce = runs["kd"].final, runs["ce"].final
    print(f"held-out ppl: distilled {kd.ppl:.2f}, CE only {ce.ppl:.2f}")
    assert kd.ppl < 0.9 * ce.ppl, (kd.ppl, ce.ppl)


def test_load_balancing_lowers_expert_imbalance(runs):
    with_aux, without = runs["ce"].final, runs["ce_noaux"].final
    print(f"expert load CV: with aux {with_aux.expert_cv}, without {without.expert_cv}")
    assert set(with_aux.expert_cv) == {0}  # the MoE layer of the default student
    assert with_aux.mean_cv < without.mean_cv, (with_aux.expert_load, without.expert_load)
    for load in with_aux.expert_load.values():
        assert abs(sum(load) - 1) < 1e-3


def test_resume_continues_exactly(setup, tmp_path):
    """Interrupted at step 3 (checkpoint) and resumed == uninterrupted, bit for bit."""
    _, teacher, data = setup
    cfg = replace(SMALL, steps=5, alpha=0.5, aux_weight=0.05, eval_max_seqs=2)
    full, _ = build_student(DEFAULT_STUDENT, teacher, seed=0)
    train(full, data, cfg, teacher=teacher, log=lambda m: None)
    part, _ = build_student(DEFAULT_STUDENT, teacher, seed=0)
    train(part, data, replace(cfg, stop_after=3), teacher=teacher, ckpt_dir=tmp_path, log=lambda m: None)
    resumed, _ = build_student(DEFAULT_STUDENT, teacher, seed=1)  # different init: must be overwritten
    train(resumed, data, cfg, teacher=teacher, ckpt_dir=tmp_path, resume=True, log=lambda m: None)
    assert weight_digest(resumed) == weight_digest(full)
    with pytest.raises(UserError, match="different training settings"):
        train(resumed, data, replace(cfg, steps=9), teacher=teacher, ckpt_dir=tmp_path, resume=True)


def test_cli_writes_a_loadable_moe_hybrid_checkpoint(tmp_path, hf_model, capsys):
    from qwen2_edge.model.checkpoint import open_checkpoint
    from qwen2_edge.model.spec import MoEFFN

    data = tmp_path / "data.txt"
    data.write_text(corpus.heldout_text()[:60000])
    out = tmp_path / "student"
    args = ["distill", "--data", str(data), "--out", str(out), "--steps", "2", "--seq-len", "64",
            "--batch-size", "2", "--eval-max-seqs", "2", "--layers", "3", "--moe-layers", "0,2",
            "--window", "16", "--window-layers", "1", "--no-progress", "--threads", "1",
            "--max-position-embeddings", "8192"]  # fmt: skip
    assert main(args) == 0
    ck = open_checkpoint(out, need_tokenizer=True)
    assert ck.spec.max_position_embeddings == 8192  # the flag reaches config.json
    assert [layer.attention.window for layer in ck.spec.layers] == [None, 16, None]
    assert [isinstance(layer.ffn, MoEFFN) for layer in ck.spec.layers] == [True, False, True]
    teacher = open_checkpoint("builtin:teacher")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / f).read_bytes() == (teacher.path / f).read_bytes()
    report = json.loads((out / "distill_report.json").read_text())
    assert report["init"]["layer_map"] == [0, 2, 3]
    assert report["init"]["sources"]["model.embed_tokens.weight"] == "copy model.embed_tokens.weight"
    assert (
        report["init"]["sources"]["model.layers.1.mlp.up_proj.weight"]
        == "copy model.layers.2.mlp.up_proj.weight"
    )
    assert report["init"]["sources"]["model.layers.0.mlp.experts.gate_up_proj"].startswith("slice")
    # transformers loads it and computes the same logits as the model we trained and saved
    model = hf_model(out)
    ids = torch.tensor([teacher_tokens(ck.path)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert torch.isfinite(logits).all() and logits.shape[-1] == teacher.spec.vocab_size
    # refuses to overwrite
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err


def teacher_tokens(folder: Path) -> list[int]:
    from qwen2_edge.model.tokenizer import TextTokenizer

    return TextTokenizer(folder).encode("def f(x):\n    return x + 1\n")


def test_student_max_position_embeddings_declares_context_without_changing_logits():
    """A student may declare more RoPE positions than its teacher (long-context speed/memory benchmarks);
    None keeps the teacher's. Guards: the field not reaching config.json, and a RoPE setup whose values
    depend on it (the student's logits inside the trained positions must not change)."""
    _, teacher = load_teacher("builtin:teacher")
    t_cfg = teacher.config.to_dict()
    assert resolve_config(DEFAULT_STUDENT, t_cfg)["max_position_embeddings"] == 2048  # the teacher's
    long_spec = StudentSpec.from_dict({**DEFAULT_STUDENT.to_dict(), "max_position_embeddings": 32768})
    assert resolve_config(long_spec, t_cfg)["max_position_embeddings"] == 32768
    short, _ = build_student(DEFAULT_STUDENT, teacher, seed=0)
    long, _ = build_student(long_spec, teacher, seed=0)
    assert long.config.max_position_embeddings == 32768
    ids = torch.arange(300)[None] * 7 % 4000  # past the 64-token window of layer 0
    with torch.no_grad():
        torch.testing.assert_close(long(input_ids=ids).logits, short(input_ids=ids).logits, rtol=0, atol=0)
    with pytest.raises(UserError, match="max_position_embeddings must be >= 1, got 0"):
        resolve_config(replace(DEFAULT_STUDENT, max_position_embeddings=0), t_cfg)


def test_student_vocab_contradicting_teacher_is_one_line_error(tmp_path, capsys):
    spec = tmp_path / "student.json"
    spec.write_text(json.dumps({"layers": 2, "vocab_size": 5000}))
    rc = main(["distill", "--student", str(spec), "--out", str(tmp_path / "o"), "--steps", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "vocab_size 5000 contradicts the teacher's 4096" in err
    spec.write_text(json.dumps({"layers": 2, "experts_typo": 3}))
    assert main(["distill", "--student", str(spec), "--out", str(tmp_path / "o"), "--steps", "1"]) == 2
    assert "unknown student spec key(s) experts_typo" in capsys.readouterr().err


def test_two_process_gloo_ranks_end_identical_and_loss_falls(tmp_path):
    data = tmp_path / "data.txt"
    data.write_text(corpus.heldout_text()[:80000])
    out = tmp_path / "student"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "qwen2_edge", "distill", "--data", str(data), "--out", str(out), "--steps", "6",
           "--seq-len", "64", "--batch-size", "2", "--eval-max-seqs", "8", "--warmup", "1", "--no-progress",
           "--threads", "1"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "distill_report.json").read_text())
    assert report["processes"] == 2
    digests = report["rank_weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    evals = report["evaluations"]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 6
    assert evals[-1]["ce"] < evals[0]["ce"], evals
