"""The pipeline: every stage runs on a tiny checkpoint, reruns come from the stage cache, an interrupted
run resumes after its last completed stage, and refusals / bad input are one-line errors."""

from __future__ import annotations

import json
import shutil

import pytest

from qwen2_edge.cli import main
from qwen2_edge.pipeline import stages
from qwen2_edge.pipeline.config import PipelineConfig
from qwen2_edge.pipeline.run import run_pipeline


def _cfg(model, out, **kw) -> PipelineConfig:
    base = dict(
        model=str(model),
        formats=("onnx", "gguf"),
        quants=("int8",),
        check_ctx=64,
        check_chunks=2,
        bench=False,
    )
    base.update(kw)
    return PipelineConfig(out=out, **base)


def test_pipeline_runs_every_stage_then_reruns_from_cache(fixture_dir, tmp_path):
    out = tmp_path / "run"
    res = run_pipeline(_cfg(fixture_dir("moe"), out), echo=lambda m: None)
    assert {a.name for a in res.artifacts} == {"int8-onnx", "int8-gguf"}
    for a in res.artifacts:
        assert a.path.exists()
    rows = {r["artifact"]: r for r in json.loads((out / "report.json").read_text())["summary"]}
    for name in ("int8-onnx", "int8-gguf"):
        r = rows[name]
        assert r["passed"] is True
        assert 0 <= r["kld_mean"] < 0.01 and r["top1"] > 0.9  # int8 of a tiny random model: close to float
        assert 8 < r["bits_per_weight"] < 12
    assert (out / "summary.md").read_text().count("int8-") >= 2
    assert "<table>" in (out / "report.html").read_text()
    first = [s["cached"] for s in res.stages]
    assert not any(first[:-1])
    again = run_pipeline(_cfg(fixture_dir("moe"), out), echo=lambda m: None)
    assert [s["cached"] for s in again.stages][:-1] == [True] * (len(again.stages) - 1)


def test_interrupted_pipeline_resumes_after_last_completed_stage(fixture_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    calls = []
    real_check = stages.check

    def interrupted(*a, **k):
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(stages, "check", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(_cfg(fixture_dir("dense"), out, formats=("gguf",)), echo=lambda m: None)
    assert calls and not (out / "check.json").exists()
    assert not list((out / "artifacts").glob(".*partial*"))  # nothing half-written left behind
    monkeypatch.setattr(stages, "check", real_check)
    res = run_pipeline(_cfg(fixture_dir("dense"), out, formats=("gguf",)), echo=lambda m: None)
    by_stage = {s["stage"].split(" ")[0]: s["cached"] for s in res.stages}
    assert by_stage["quantize"] is True and by_stage["check"] is False
    assert (out / "check.json").exists()


def test_format_that_cannot_hold_the_model_is_recorded_not_fatal(fixture_dir, tmp_path):
    # moe_sliding: a Qwen2-MoE with sliding windows and a learned (nonzero) shared-expert gate, which no
    # llama.cpp architecture computes exactly: GGUF refuses it, ONNX goes on.
    res = run_pipeline(_cfg(fixture_dir("moe_sliding"), tmp_path / "r"), echo=lambda m: None)
    assert [a.name for a in res.artifacts] == ["int8-onnx"]
    assert len(res.refused) == 1 and res.refused[0]["format"] == "gguf"
    assert "exact" in res.refused[0]["reason"] and "onnx" in res.refused[0]["reason"]
    assert res.refused[0]["reason"] in (tmp_path / "r" / "summary.md").read_text()
    assert not (tmp_path / "r" / "artifacts" / "int8.gguf").exists()


def test_pipeline_cli_bad_inputs(fixture_dir, tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main(["pipeline", "--model", str(fixture_dir("dense")), "--out", str(foreign)]) == 2
    assert "not a qwen2-edge pipeline folder" in capsys.readouterr().err
    assert (
        main(["pipeline", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--no-bench"])
        == 2
    )
    assert "no such file or directory" in capsys.readouterr().err
    assert (
        main(
            [
                "pipeline",
                "--model",
                str(fixture_dir("dense")),
                "--out",
                str(tmp_path / "o2"),
                "--quants",
                "q4_k_m",
                "--formats",
                "onnx",
            ]
        )
        == 2
    )
    assert "none of the quants" in capsys.readouterr().err
    assert (
        main(
            [
                "pipeline",
                "--model",
                str(fixture_dir("dense")),
                "--out",
                str(tmp_path / "o3"),
                "--quants",
                "int3",
            ]
        )
        == 2
    )
    assert "unknown quant 'int3'" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "mine"


def test_export_checks_free_disk_before_writing(fixture_dir, tmp_path, monkeypatch, capsys):
    import collections

    Usage = collections.namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**9, 10**9, 1000))
    out = tmp_path / "x.gguf"
    assert (
        main(["export", str(fixture_dir("dense")), "--format", "gguf", "--quant", "f16", "--out", str(out)])
        == 2
    )
    err = capsys.readouterr().err
    assert "MiB are free" in err and "\n" not in err.strip()
    assert not out.exists() and not list(tmp_path.iterdir())
