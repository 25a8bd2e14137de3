"""The pipeline's stages as plain functions over the library (distill, quant, exporters, validation, bench)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..fsutil import atomic_file
from .config import PipelineConfig


def distill_student(cfg: PipelineConfig, out_dir: Path, echo=print) -> dict[str, Any]:
    from dataclasses import replace

    from ..distill.api import REPORT, distill
    from ..distill.config import DEMO_CONFIG

    train = replace(DEMO_CONFIG, **({"steps": cfg.distill_steps} if cfg.distill_steps else {}))
    path = distill(cfg.teacher, cfg.student, cfg.data or None, out_dir, config=train, force=True, log=echo)
    report = path / REPORT
    return json.loads(report.read_text()) if report.is_file() else {}


def quantize_and_export(
    cfg: PipelineConfig, student: Path, quant: str, targets: list[tuple[str, str]], paths: dict[str, Path]
) -> dict[str, dict[str, Any]]:
    """Quantize the student once for `quant` and write it in every target format.

    A format that cannot represent the model exactly refuses it (UnsupportedError); the refusal is recorded
    as that artifact's result and the other formats go on."""
    from ..errors import UnsupportedError
    from ..exporters.api import export_checkpoint, make_policy, quantize_for_export
    from ..exporters.registry import FORMATS
    from ..model.checkpoint import open_checkpoint

    ckpt = open_checkpoint(student, need_tokenizer=True)
    results: dict[str, dict[str, Any]] = {}
    for fmt, fq in list(targets):
        try:
            FORMATS[fmt].check(ckpt, fq)
        except UnsupportedError as e:  # refused before spending time on quantization
            results[fmt] = {"refused": e.problem}
            targets = [t for t in targets if t[0] != fmt]
    schemes = {fmt: FORMATS[fmt].scheme(fq) for fmt, fq in targets}
    scheme = next((s for s in schemes.values() if s is not None), None)
    qmodel = quantize_for_export(ckpt, scheme, cfg.method, make_policy(cfg.policy)) if scheme else None
    for fmt, fq in targets:
        qm = qmodel if schemes[fmt] else None
        try:
            res = export_checkpoint(ckpt, fmt, fq, paths[fmt], qmodel=qm, force=True, threads=cfg.threads)
        except UnsupportedError as e:
            results[fmt] = {"refused": e.problem}
            continue
        results[fmt] = res.to_json()
    return results


def check(cfg: PipelineConfig, student: Path, artifacts: list, out: Path) -> dict[str, Any]:
    from ..validation.compare import CheckOptions, check_artifacts
    from ..validation.report_html import write_report

    opts = CheckOptions(
        ctx=cfg.check_ctx, chunks=cfg.check_chunks, threads=cfg.threads, progress=None, kv_cache=cfg.kv_cache
    )
    res = check_artifacts(student, [a.path for a in artifacts], opts)
    write_report(res, out / "check.html", force=True)
    data = res.to_json()
    if cfg.teacher and not cfg.model:
        # How far the student is from its teacher, on the same held-out text (informational, no gates).
        tv = check_artifacts(
            cfg.teacher, [student], CheckOptions(chunks=cfg.check_chunks, limits={}, progress=None)
        )
        t, s = tv.to_json()["reference"], tv.to_json()["artifacts"][0]
        data["teacher_vs_student"] = {
            "teacher_ppl": t.get("ppl"),
            "student_ppl": s.get("ppl"),
            "kld_mean": s.get("kld_mean"),
            "top1_agreement": s.get("top1_agreement"),
        }
    data["report"] = str(out / "check.html")
    with atomic_file(out / "check.json", force=True) as tmp:
        tmp.write_text(json.dumps(data, indent=2))
    return data


def bench(cfg: PipelineConfig, student: Path, artifacts: list, out: Path) -> list[dict[str, Any]]:
    from ..bench.measure import BenchOptions
    from ..bench.run import bench_artifacts

    opts = BenchOptions(
        prompt_tokens=cfg.bench_prompt_tokens,
        gen_tokens=cfg.bench_gen_tokens,
        threads=cfg.threads or 2,
        repeat=2,
        kv_cache=cfg.kv_cache,
    )
    paths = [student, *[a.path for a in artifacts]]
    labels = ["float student", *[a.name for a in artifacts]]
    kv_caches = ["f32", *[None] * len(artifacts)]  # the float student is the f32 reference
    rows = [r.to_json() for r in bench_artifacts(paths, opts, labels=labels, kv_caches=kv_caches)]
    with atomic_file(out / "bench.json", force=True) as tmp:
        tmp.write_text(json.dumps(rows, indent=2))
    return rows
