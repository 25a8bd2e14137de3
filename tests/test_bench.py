"""`qwen2-edge bench`: the byte model behind the roofline, and the command end to end on real runtimes.

No timing thresholds: speeds are only checked to be measured (positive); the byte counts are exact.
"""

from __future__ import annotations

import json

import pytest

from qwen2_edge.bench.bytes_per_token import bytes_per_token, inventory, kv_bytes_per_token
from qwen2_edge.bench.result import REQUIRED_KEYS
from qwen2_edge.cli import main
from qwen2_edge.model.params import count_params
from qwen2_edge.model.spec import read_spec


@pytest.mark.parametrize("name", ["dense", "dense_untied", "moe", "moe_sliding"])
def test_weight_bytes_per_token_is_the_active_parameter_count(name, fixture_dir):
    """Guards the MoE discount (top_k/E of routed experts) and the one-row embedding read.

    The reference computes in float32, so a step reads 4 bytes per active parameter, except that an
    untied input embedding contributes one row instead of its whole table."""
    path = fixture_dir(name)
    spec = read_spec(path)
    counts = count_params(spec)
    expected = 4 * counts.active
    if not spec.tie_word_embeddings:
        expected -= 4 * (spec.vocab_size - 1) * spec.hidden_size
    inv = inventory(path, "hf")
    assert bytes_per_token(inv, context=1).weights == expected
    if spec.is_moe:
        assert inv.geometry.expert_fraction < 1
        assert bytes_per_token(inv, 1).weights < 4 * counts.total


def test_kv_bytes_stop_growing_on_sliding_layers(fixture_dir):
    """Sliding layers read at most `window` positions: from 4w to 8w only the full layers' reads grow."""
    path = fixture_dir("sliding")
    spec = read_spec(path)
    geom = inventory(path, "hf").geometry
    w = spec.max_window
    full_layers = sum(1 for x in spec.windows if x is None)
    assert 0 < full_layers < spec.num_layers
    per_position = 2 * spec.num_kv_heads * spec.head_dim * 4  # K and V, float32
    grow = kv_bytes_per_token(geom, 8 * w) - kv_bytes_per_token(geom, 4 * w)
    assert grow == full_layers * per_position * 4 * w
    assert kv_bytes_per_token(geom, 8 * w, use_window=False) == spec.num_layers * per_position * 8 * w


def test_bench_reference_writes_json_table_and_plot(fixture_dir, tmp_path, capsys):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    rc = main(
        ["bench", str(fixture_dir("dense")), "--prompt-tokens", "16", "--gen-tokens", "8",
         "--repeat", "1", "--json", str(out), "--plot", str(png)]
    )  # fmt: skip
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["machine"]["bandwidth"]["gb_s"] > 0
    (row,) = doc["results"]
    assert row["runtime"] == "transformers"
    for key in REQUIRED_KEYS[2:]:
        assert row[key] > 0, key
    assert row["bits_per_weight"] == pytest.approx(32.0)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "decode t/s" in capsys.readouterr().out


def test_bench_bad_artifact_is_one_line_error(tmp_path, capsys):
    bogus = tmp_path / "nothing.bin"
    bogus.write_bytes(b"\0" * 16)
    assert main(["bench", str(bogus)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing.bin" in err[0] and "not a recognized model artifact" in err[0]


def test_bench_onnx_and_gguf_artifacts_write_positive_json(fixture_dir, tmp_path):
    """Issue 9's evidence: bench runs a tiny fixture's ONNX and GGUF exports in their own runtimes."""
    from qwen2_edge.exporters.api import export_model

    ckpt = fixture_dir("sliding")  # windowed layers: both formats encode them exactly
    onnx_dir = export_model(ckpt, "onnx", "int4", tmp_path / "m-int4").path
    gguf_file = export_model(ckpt, "gguf", "q4_0", tmp_path / "m-q4_0.gguf").path
    out = tmp_path / "bench.json"
    rc = main(
        ["bench", str(onnx_dir), str(gguf_file), "--prompt-tokens", "12", "--gen-tokens", "6",
         "--repeat", "1", "--json", str(out), "--no-window-sweep"]
    )  # fmt: skip
    assert rc == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["runtime"] for r in rows] == ["onnxruntime", "llama.cpp"]
    assert [r["path"] for r in rows] == [str(onnx_dir), str(gguf_file)]
    for row in rows:
        for key in REQUIRED_KEYS[2:]:
            assert row[key] > 0, (row["runtime"], key)
        # quantized: above int4's 4 bits (scales, float norms, int8 embeddings), far below float32's 32
        assert 4 < row["bits_per_weight"] < 16
        # both artifacts carry the window (the sweep at w, 4w, 8w: tests/test_kv_cache_contexts.py)
        assert row["window"] == 8 and row["window_decode_tok_s"] == {} and row["contexts"] == []
    # No --kv-cache: each runtime's own default reached the session.
    from qwen2_edge.runtimes.llamacpp import LlamaCppSession
    from qwen2_edge.runtimes.onnxruntime import OnnxSession

    assert [r["kv_cache"] for r in rows] == [OnnxSession.default_kv_cache, LlamaCppSession.default_kv_cache]
