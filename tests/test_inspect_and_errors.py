"""`inspect` on every fixture, and one-line errors (exit 2) for bad checkpoints."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from qwen2_edge.cli import main

from .conftest import ALL_FIXTURES


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_inspect_json(name, fixture_dir, capsys):
    assert main(["inspect", str(fixture_dir(name)), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["vocab_rows"] == 384 and info["tokenizer_size"] == 320
    assert info["params_active"] <= info["params_total"]
    assert info["estimated_bytes"]["int4"] < info["estimated_bytes"]["int8"] < info["estimated_bytes"]["f16"]
    assert len(info["layers"]) == info["num_layers"]


def test_inspect_table_runs_as_console_script(fixture_dir):
    r = subprocess.run(
        [sys.executable, "-m", "qwen2_edge", "inspect", str(fixture_dir("moe_sliding"))],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "sliding w=8" in r.stdout and "MoE 8 experts top-2" in r.stdout


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (path / "config.json").write_text(json.dumps(cfg))


def _bad(kind, path):
    if kind == "missing_key":
        _edit_config(path, hidden_size=None)
        return "missing config key(s) hidden_size"
    if kind == "unknown_arch":
        _edit_config(path, architectures=["LlamaForCausalLM"])
        return "unsupported architecture 'LlamaForCausalLM'"
    if kind == "shape_mismatch":
        _edit_config(path, intermediate_size=96)
        return "has shape [128, 64] but config.json implies [96, 64]"
    if kind == "truncated":
        f = path / "model.safetensors"
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2])
        return "truncated safetensors file"
    if kind == "pickle_only":
        (path / "model.safetensors").rename(path / "pytorch_model.bin")
        return "only pickle weights (pytorch_model.bin)"
    if kind == "bad_json":
        (path / "config.json").write_text("{not json")
        return "not valid JSON"
    if kind == "bad_type":
        _edit_config(path, num_hidden_layers="two")
        return "invalid config"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    ["missing_key", "unknown_arch", "shape_mismatch", "truncated", "pickle_only", "bad_json", "bad_type"],
)
def test_bad_checkpoint_one_line_error(kind, fixture_dir, tmp_path, capsys):
    path = _copy(fixture_dir("dense"), tmp_path / kind)
    expected = _bad(kind, path)
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert expected in err and str(path) in err


def test_not_a_checkpoint_directory(tmp_path, capsys):
    f = tmp_path / "weights.txt"
    f.write_text("hello")
    assert main(["inspect", str(f)]) == 2
    assert "not a checkpoint directory" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    assert "no such file or directory" in capsys.readouterr().err


def test_pickle_is_never_opened(fixture_dir, tmp_path, monkeypatch):
    """Even with a loadable-looking pickle present, we refuse without unpickling."""
    import pickle

    path = _copy(fixture_dir("dense"), tmp_path / "p")
    (path / "model.safetensors").unlink()
    (path / "pytorch_model.bin").write_bytes(b"not really a pickle")
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("unpickled"))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    assert main(["inspect", str(path)]) == 2
