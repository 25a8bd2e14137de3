"""Model spec and checkpoint loading against transformers' own resolution of the same config."""

from __future__ import annotations

import json

import pytest
import torch

from qwen2_edge.model import DenseFFN, MoEFFN, open_checkpoint, read_spec
from qwen2_edge.model.params import count_params
from qwen2_edge.testing import make_checkpoint

from .conftest import ALL_FIXTURES


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_layer_kinds_match_transformers(name, fixture_dir, hf_model):
    path = fixture_dir(name)
    spec = read_spec(path)
    model = hf_model(path)
    assert [lt == "sliding_attention" for lt in model.config.layer_types] == [
        w is not None for w in spec.windows
    ]
    for layer, hf_layer in zip(spec.layers, model.model.layers, strict=True):
        is_moe = hasattr(hf_layer.mlp, "experts")
        assert isinstance(layer.ffn, MoEFFN) == is_moe
        if is_moe:
            assert layer.ffn.num_experts == hf_layer.mlp.experts.num_experts
            assert layer.ffn.top_k == hf_layer.mlp.gate.top_k
        if layer.attention.window is not None:
            assert hf_layer.self_attn.sliding_window == layer.attention.window


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_param_counts_match_transformers(name, fixture_dir, hf_model):
    path = fixture_dir(name)
    model = hf_model(path)
    counts = count_params(read_spec(path))
    # Independent count: every parameter of the transformers model (tied weights counted once).
    total = sum(p.numel() for p in model.parameters())
    inactive = 0
    for layer in model.model.layers:
        if hasattr(layer.mlp, "experts"):
            ex = layer.mlp.experts
            per_expert = (ex.gate_up_proj.numel() + ex.down_proj.numel()) // ex.num_experts
            inactive += (ex.num_experts - layer.mlp.gate.top_k) * per_expert
    assert counts.total == total
    assert counts.active == total - inactive
    if any(isinstance(layer.ffn, MoEFFN) for layer in read_spec(path).layers):
        assert counts.active < counts.total


def test_mlp_only_layers_and_sparse_step(tmp_path):
    path = make_checkpoint("moe", tmp_path / "m")
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(num_hidden_layers=4, mlp_only_layers=[], decoder_sparse_step=2)
    (path / "config.json").write_text(json.dumps(cfg))
    spec = read_spec(path)
    # Qwen2MoeDecoderLayer: MoE where (i + 1) % decoder_sparse_step == 0
    assert [type(layer.ffn) for layer in spec.layers] == [DenseFFN, MoEFFN, DenseFFN, MoEFFN]


def test_saved_layer_types_win_over_derivation(tmp_path):
    path = make_checkpoint("sliding", tmp_path / "s")
    cfg = json.loads((path / "config.json").read_text())
    derived = read_spec(path).windows
    cfg["layer_types"] = ["sliding_attention", "full_attention", "sliding_attention"]
    (path / "config.json").write_text(json.dumps(cfg))
    assert derived == (None, 8, 8)  # Qwen2: layers i >= max_window_layers slide
    assert read_spec(path).windows == (8, None, 8)


def test_moe_family_derivation_differs_from_dense():
    # Qwen2-MoE slides even layers i < max_window_layers (transformers 5.x), unlike Qwen2.
    from qwen2_edge.model.spec import spec_from_dict

    base = {
        "vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 4,
        "num_attention_heads": 2, "num_key_value_heads": 1, "use_sliding_window": True, "sliding_window": 4, "max_window_layers": 3,
    }  # fmt: skip
    dense = spec_from_dict({**base, "architectures": ["Qwen2ForCausalLM"]})
    moe = spec_from_dict(
        {
            **base,
            "architectures": ["Qwen2MoeForCausalLM"],
            "num_experts": 2,
            "num_experts_per_tok": 1,
            "moe_intermediate_size": 8,
        }  # fmt: skip
    )
    assert dense.windows == (None, None, None, 4)
    assert moe.windows == (4, None, 4, None)


def test_sharded_checkpoint_loads_lazily(tmp_path):
    path = make_checkpoint("moe", tmp_path / "sharded", max_shard_size="200KB")
    assert (path / "model.safetensors.index.json").is_file()
    assert len(list(path.glob("*.safetensors"))) > 1
    ckpt = open_checkpoint(path)
    gate, up, down = ckpt.experts(0)
    assert gate.shape == (4, 32, 64) and down.shape == (4, 64, 32)


def test_fused_expert_layout_is_accepted(tmp_path, fixture_dir):
    """transformers 5 keeps experts fused in memory; a checkpoint saved that way must load identically."""
    from safetensors.torch import save_file

    src = open_checkpoint(fixture_dir("moe"))
    out = tmp_path / "fused"
    out.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (out / f).write_bytes((src.path / f).read_bytes())
    tensors = {}
    for name in src.names():
        if ".mlp.experts." not in name:
            tensors[name] = src.tensor(name)
    for layer in (0, 2):
        g, u, d = src.experts(layer)
        tensors[f"model.layers.{layer}.mlp.experts.gate_up_proj"] = torch.cat([g, u], dim=1).contiguous()
        tensors[f"model.layers.{layer}.mlp.experts.down_proj"] = d.contiguous()
    save_file(tensors, out / "model.safetensors")
    fused = open_checkpoint(out)
    assert fused.fused_expert_layers == {0, 2}
    for a, b in zip(fused.experts(2), src.experts(2), strict=True):
        assert torch.equal(a, b)
