"""run_pipeline: distill -> quantize -> export -> check -> bench -> report, each stage cached.

Every stage's inputs are fingerprinted; a rerun skips stages whose inputs did not change, and an interrupted
run resumes after the last completed stage (stage records are written only on completion).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..exporters.registry import FORMATS, format_quant
from ..fsutil import write_text
from .cache import StageCache, fingerprint
from .config import PipelineConfig

ARTIFACT_SUFFIX = {"onnx": "-onnx", "gguf": ".gguf"}


@dataclass
class Artifact:
    name: str  # e.g. "int4-onnx"
    path: Path
    format: str
    quant: str  # the format's own quant type (q4_0, int4, ...)
    export: dict[str, Any]  # ExportResult.to_json()


@dataclass
class PipelineResult:
    student: Path
    artifacts: list[Artifact]
    check: dict[str, Any] = field(default_factory=dict)
    bench: list[dict[str, Any]] = field(default_factory=list)
    distill: dict[str, Any] = field(default_factory=dict)
    teacher_vs_student: dict[str, Any] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)
    refused: list[dict[str, str]] = field(default_factory=list)  # formats that cannot hold the model exactly


class Progress:
    """One line per stage: what runs, whether it came from the cache, how long it took."""

    def __init__(self, total: int, echo: Callable[[str], None] = print) -> None:
        self.total, self.i, self.echo, self.log = total, 0, echo, []

    def stage(self, name: str, fn: Callable[[], tuple[dict[str, Any], bool]]) -> dict[str, Any]:
        self.i += 1
        self.echo(f"[{self.i}/{self.total}] {name} ...")
        t0 = time.perf_counter()
        result, cached = fn()
        dt = time.perf_counter() - t0
        self.echo(f"[{self.i}/{self.total}] {name}: {'cached' if cached else f'done in {dt:.1f} s'}")
        self.log.append({"stage": name, "cached": cached, "seconds": round(dt, 2)})
        return result


def plan_artifacts(cfg: PipelineConfig) -> list[tuple[str, str, str]]:
    """(format, pipeline quant, format quant) for every requested combination the format can hold."""
    plan = []
    for fmt in cfg.formats:
        if fmt not in FORMATS:
            raise UserError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
        for q in cfg.quants:
            fq = format_quant(q, fmt)
            if fq is not None:
                plan.append((fmt, q, fq))
    if not plan:
        raise UserError(
            f"none of the quants {', '.join(cfg.quants)} exists in the formats {', '.join(cfg.formats)}"
        )
    check_kv_cache(cfg)
    return plan


def check_kv_cache(cfg: PipelineConfig) -> None:
    """--kv-cache that a requested format's runtime cannot hold: refused before the first stage."""
    from ..runtimes.registry import RUNTIMES

    if cfg.kv_cache is None:
        return
    for entry in RUNTIMES:
        cls = entry.session_class()
        if entry.format in cfg.formats and cfg.kv_cache not in cls.kv_cache_types:
            raise UserError(
                f"--kv-cache {cfg.kv_cache}: {entry.runtime} (the {entry.format} runtime) cannot hold it "
                f"(choose from {', '.join(cls.kv_cache_types)}, or leave --formats {entry.format} out)"
            )


def run_pipeline(cfg: PipelineConfig, echo: Callable[[str], None] = print) -> PipelineResult:
    from . import stages

    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    cache = StageCache(out)
    plan = plan_artifacts(cfg)
    quant_groups = sorted({q for _, q, _ in plan})
    n_stages = (0 if cfg.model else 1) + len(quant_groups) + 1 + int(cfg.bench) + 1
    progress = Progress(n_stages, echo)

    # 1. student
    if cfg.model:
        student = Path(cfg.model)
        distill_info: dict[str, Any] = {}
    else:
        student_dir = out / "student"
        key = fingerprint(
            "distill", cfg.teacher, cfg.student, cfg.distill_steps, *[Path(d) for d in cfg.data],
            *([Path(cfg.student)] if cfg.student and Path(cfg.student).is_file() else []),
        )  # fmt: skip

        def do_distill():
            hit = cache.lookup("distill", key, [student_dir / "config.json"])
            if hit is not None:
                return hit, True
            info = stages.distill_student(cfg, student_dir)
            cache.store("distill", key, info)
            return info, False

        distill_info = progress.stage("distill student", do_distill)
        student = student_dir
    student_fp = fingerprint(student)

    # 2. quantize once per quant, export to every format (same codes in ONNX and GGUF)
    artifacts: list[Artifact] = []
    refused: list[dict[str, str]] = []
    art_dir = out / "artifacts"
    for q in quant_groups:
        targets = [(fmt, fq) for fmt, pq, fq in plan if pq == q]
        paths = {fmt: art_dir / f"{q}{ARTIFACT_SUFFIX[fmt]}" for fmt, _ in targets}
        key = fingerprint("export", student_fp, q, targets, cfg.method, cfg.policy)

        def do_export(q=q, targets=targets, paths=paths, key=key):
            hit = cache.lookup(f"export:{q}", key, [])
            if hit is not None and all(paths[f].exists() for f in hit if "refused" not in hit[f]):
                return hit, True
            results = stages.quantize_and_export(cfg, student, q, targets, paths)
            cache.store(f"export:{q}", key, results)
            return results, False

        results = progress.stage(f"quantize {q} + export {', '.join(f for f, _ in targets)}", do_export)
        for fmt, fq in targets:
            if "refused" in results[fmt]:
                echo(f"      {fmt} {fq} refused: {results[fmt]['refused']}")
                refused.append(
                    {"artifact": f"{q}-{fmt}", "format": fmt, "quant": fq, "reason": results[fmt]["refused"]}
                )
                continue
            artifacts.append(Artifact(f"{q}-{fmt}", paths[fmt], fmt, fq, results[fmt]))

    # 3. check every artifact against the student's float reference (and the student against the teacher)
    check_key = fingerprint(
        "check", student_fp, *[a.path for a in artifacts], cfg.check_ctx, cfg.check_chunks, cfg.kv_cache
    )

    def do_check():
        if not artifacts:
            return {"artifacts": [], "passed": True, "notes": ["no artifact was written"]}, False
        hit = cache.lookup("check", check_key, [out / "check.json"])
        if hit is not None:
            return hit, True
        res = stages.check(cfg, student, artifacts, out)
        cache.store("check", check_key, res)
        return res, False

    check = progress.stage("check artifacts vs float reference", do_check)

    # 4. bench
    bench: list[dict[str, Any]] = []
    if cfg.bench and artifacts:
        bench_key = fingerprint(
            "bench", student_fp, *[a.path for a in artifacts], cfg.bench_prompt_tokens, cfg.bench_gen_tokens,
            cfg.kv_cache,
        )  # fmt: skip

        def do_bench():
            hit = cache.lookup("bench", bench_key, [out / "bench.json"])
            if hit is not None:
                return {"rows": hit["rows"]}, True
            rows = stages.bench(cfg, student, artifacts, out)
            cache.store("bench", bench_key, {"rows": rows})
            return {"rows": rows}, False

        bench = progress.stage("benchmark artifacts", do_bench)["rows"]

    result = PipelineResult(
        student, artifacts, check, bench, distill_info, check.get("teacher_vs_student", {}), refused=refused
    )

    # 5. report (always rewritten: cheap, and reflects the cached results)
    def do_report():
        from .report import write_report

        return write_report(cfg, result), False

    progress.stage("write report", do_report)
    result.stages = progress.log
    write_text(out / ".qwen2-edge" / "last_run.json", json.dumps(progress.log, indent=1))
    return result
