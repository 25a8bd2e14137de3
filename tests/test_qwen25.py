"""Qwen2.5 configs (same architecture as Qwen2, different configs): nothing is windowed by mistake.

Released Qwen2.5 configs carry `sliding_window` (32768 / 131072) with `use_sliding_window: false`, and
`max_window_layers` equal to, above or below the layer count. transformers windows nothing for any of
them, so neither may an export. Measured (2-vCPU AMD EPYC, 2026-12-03), 40 tokens, f32, max |dlogit| vs
transformers: qwen25 GGUF 3.1e-5 prefill / 1.9e-5 decode, ONNX 1.9e-5 / 2.3e-5 (logit std 10.6);
qwen25_untied GGUF and ONNX 1.4e-6 both (logit std 0.79). Bound: 1e-4 (the issue's).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from qwen2_edge.model.spec import read_spec, spec_from_dict

TOL = 1e-4
IDS = [int(t) for t in np.random.default_rng(0).integers(0, 320, size=40)]
QWEN25 = ("qwen25", "qwen25_untied")


@pytest.mark.parametrize("name", QWEN25)
def test_spec_has_no_window_and_agrees_with_transformers(name, fixture_dir, hf_model):
    path = fixture_dir(name)
    spec = read_spec(path)
    assert spec.windows == (None,) * spec.num_layers
    assert spec.config["sliding_window"] > 0 and spec.config["use_sliding_window"] is False
    model = hf_model(path)
    assert set(model.config.layer_types) == {"full_attention"}
    assert spec.rope_theta == 1e6 and spec.num_heads // spec.num_kv_heads == 3


@pytest.mark.parametrize("name", QWEN25)
def test_exports_hold_no_window_and_match_transformers(name, fixture_dir, tmp_path):
    """GGUF: llama.cpp's plain qwen2 graph (no granite_swa rewrite); ONNX: every GroupQueryAttention has
    local_window_size -1. Both within 1e-4 of transformers, prefill and token-by-token decode."""
    from qwen2_edge.exporters.gguf import export_gguf
    from qwen2_edge.exporters.onnx import export_onnx
    from qwen2_edge.model.checkpoint import open_checkpoint
    from qwen2_edge.runtimes.llamacpp import LlamaCppSession, check_gguf
    from qwen2_edge.runtimes.onnxruntime import OnnxSession
    from qwen2_edge.runtimes.reference import ReferenceSession

    path = fixture_dir(name)
    ckpt = open_checkpoint(path, need_tokenizer=True)
    want = ReferenceSession(path).logits(IDS)
    result = export_gguf(ckpt, tmp_path / "m.gguf", "f32")
    assert not any("granite_swa" in n or "sliding" in n for n in result.notes)
    assert check_gguf(result.path)["general.architecture"] == "qwen2"
    with LlamaCppSession(result.path, threads=2, kv_cache="f32") as s:
        assert np.abs(s.logits(IDS) - want).max() <= TOL
        s.reset()
        inc = np.concatenate([s.append(IDS[:10])] + [s.append([t]) for t in IDS[10:]])
        assert np.abs(inc - want).max() <= TOL
    folder = tmp_path / "onnx"
    export_onnx(ckpt, folder, "f32")
    gqa = [n for n in onnx.load(folder / "model.onnx", load_external_data=False).graph.node
           if n.op_type == "GroupQueryAttention"]  # fmt: skip
    assert len(gqa) == ckpt.spec.num_layers
    for node in gqa:
        attrs = {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}
        assert attrs["local_window_size"] == -1
    s = OnnxSession(folder)
    assert np.abs(s.logits(IDS) - want).max() <= TOL
    s.reset()
    inc = np.concatenate([s.append(IDS[:4])] + [s.append([t]) for t in IDS[4:]])
    assert np.abs(inc - want).max() <= TOL


_BASE = {
    "architectures": ["Qwen2ForCausalLM"], "vocab_size": 64, "hidden_size": 16, "intermediate_size": 32,
    "num_hidden_layers": 4, "num_attention_heads": 2, "num_key_value_heads": 1,
}  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "windows"),
    [
        # Qwen2.5-0.5B / 7B: window value set, sliding off -> nothing slides, whatever max_window_layers says.
        ({"use_sliding_window": False, "sliding_window": 32768, "max_window_layers": 4}, (None,) * 4),
        ({"use_sliding_window": False, "sliding_window": 131072, "max_window_layers": 1}, (None,) * 4),
        ({"use_sliding_window": False, "sliding_window": 131072, "max_window_layers": 70}, (None,) * 4),
        # sliding on, max_window_layers == layer count: Qwen2 slides layers i >= max_window_layers -> none.
        ({"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 4}, (None,) * 4),
        ({"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 2}, (None, None, 8, 8)),
        # A saved layer_types is authoritative, in both directions.
        (
            {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 0,
             "layer_types": ["full_attention"] * 4},
            (None,) * 4,
        ),
        (
            {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 4,
             "layer_types": ["sliding_attention", "full_attention"] * 2},
            (8, None, 8, None),
        ),
    ],
)  # fmt: skip
def test_window_resolution_follows_transformers(extra, windows):
    from transformers import Qwen2Config

    spec = spec_from_dict({**_BASE, **extra})
    assert spec.windows == windows
    hf = Qwen2Config.from_dict({**_BASE, **extra})
    assert tuple(lt == "sliding_attention" for lt in hf.layer_types) == tuple(w is not None for w in windows)
