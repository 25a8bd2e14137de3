"""Qwen2-MoE as llama.cpp's granite_swa with experts, run in llama.cpp and checked against transformers.

Since step35 holds MoE hybrids with each dense layer once (tests/test_gguf_step35.py), granite_swa with
experts is left with what step35 cannot run: MoE in every layer with sliding windows or renormalized top-k
(same bytes read as step35, and a tied table stored once), and linear RoPE scaling (step35's sliding layers
ignore it). Fixtures, every shared_expert_gate zeroed (what a student distilled with shared_gate="constant"
has): `moe_sliding` with every layer MoE (8 experts top-2, norm_topk_prob, window 8 on layers 0 and 2,
tied), and `moe` (layer 1 dense) with norm_topk_prob and linear RoPE scaling x2. Tolerances as in
test_gguf_export.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from qwen2_edge.errors import UnsupportedError

from .test_gguf_export import F32_TOL, KERNEL_TOL, _export, _ids


def zero_shared_gates(folder) -> None:
    """Set every shared_expert_gate weight of a (single-file) checkpoint to zero, in place."""
    from safetensors.numpy import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(path)
    for name in tensors:
        if name.endswith("shared_expert_gate.weight"):
            tensors[name] = np.zeros_like(tensors[name])
    save_file(tensors, path, metadata={"format": "pt"})


def variant(base: str, seed: int | None = None, **config):
    """A FixtureSpec: FIXTURES[base] with config keys replaced."""
    from qwen2_edge.testing import FIXTURES
    from qwen2_edge.testing.fixtures import FixtureSpec

    spec = FIXTURES[base]
    return FixtureSpec(**{**spec.__dict__, "seed": spec.seed if seed is None else seed,
                          "config": {**spec.config, **config}})  # fmt: skip


def architecture(path) -> str:
    from gguf import GGUFReader

    return GGUFReader(str(path)).fields["general.architecture"].contents()


@pytest.fixture(scope="module")
def constgate(tmp_path_factory):
    """name -> checkpoint with zeroed shared-expert gates that goes to granite_swa with experts."""
    from qwen2_edge.testing import make_checkpoint

    root = tmp_path_factory.mktemp("constgate")
    specs = {
        "all_moe_sliding": variant("moe_sliding", mlp_only_layers=[]),
        "moe_rope_linear": variant("moe", norm_topk_prob=True, rope_scaling={"rope_type": "linear", "factor": 2.0}),
    }  # fmt: skip
    out = {}
    for name, spec in specs.items():
        out[name] = make_checkpoint(spec, root / name)
        zero_shared_gates(out[name])
    return out


@pytest.mark.parametrize("name", ["all_moe_sliding", "moe_rope_linear"])
def test_f32_logits_match_transformers(name, constgate, tmp_path):
    """40 tokens (5x the window): prefill, and the same positions through the KV cache."""
    from qwen2_edge.runtimes.llamacpp import LlamaCppSession
    from qwen2_edge.runtimes.reference import ReferenceSession

    result, ckpt = _export(constgate[name], tmp_path, "f32")
    assert architecture(result.path) == "granite_swa"
    assert any("granite_swa with experts" in n for n in result.notes)
    assert not ckpt.tensor("model.layers.0.mlp.shared_expert_gate.weight").any()
    ref = ReferenceSession(constgate[name])
    ids = _ids(ref)
    want = ref.logits(ids)
    with LlamaCppSession(result.path, threads=2, kv_cache="f32") as s:
        got = s.logits(ids)
        s.reset()
        inc = np.concatenate([s.append(ids[:10])] + [s.append([t]) for t in ids[10:]])
    err, err_inc = np.abs(got - want).max(), np.abs(inc - want).max()
    print(f"{name} f32 granite_swa: max|dlogit| prefill {err:.2e}, incremental {err_inc:.2e}")
    assert got.shape == want.shape
    assert err <= F32_TOL and err_inc <= F32_TOL


def test_layout_is_granite_moe(constgate, tmp_path):
    """Experts in every layer, fused shared gate/up, no shared-expert gate tensor, shared down projection
    halved, windows where transformers has them."""
    from gguf import GGUFReader

    result, ckpt = _export(constgate["all_moe_sliding"], tmp_path, "f32")
    r = GGUFReader(str(result.path))
    t = {x.name: np.asarray(x.data) for x in r.tensors}
    assert r.fields["general.architecture"].contents() == "granite_swa"
    assert r.fields["granite_swa.attention.sliding_window_pattern"].contents() == [True, False, True, False]
    assert all(f"blk.{i}.ffn_gate_exps.weight" in t for i in range(4))
    assert not any("ffn_gate_inp_shexp" in n or "ffn_gate_shexp" in n for n in t)
    assert "output.weight" not in t  # granite reuses the tied token_embd
    g = ckpt.tensor("model.layers.0.mlp.shared_expert.gate_proj.weight").numpy()
    u = ckpt.tensor("model.layers.0.mlp.shared_expert.up_proj.weight").numpy()
    d = ckpt.tensor("model.layers.0.mlp.shared_expert.down_proj.weight").numpy()
    assert np.array_equal(t["blk.0.ffn_up_shexp.weight"], np.concatenate([g, u]))
    assert np.array_equal(t["blk.0.ffn_down_shexp.weight"], d / 2)


def test_linear_rope_hybrid_pays_for_dense_copies(constgate, tmp_path):
    """The one hybrid step35 cannot hold (linear RoPE scaling): granite_swa's dense layer 1 is E copies
    under a zero router with an all-zero shared expert, and the note says what that costs."""
    from gguf import GGUFReader

    result, _ = _export(constgate["moe_rope_linear"], tmp_path, "f32")
    t = {x.name: np.asarray(x.data) for x in GGUFReader(str(result.path)).tensors}
    assert t["blk.1.ffn_gate_exps.weight"].shape[0] == 4 and not t["blk.1.ffn_gate_inp.weight"].any()
    assert not t["blk.1.ffn_down_shexp.weight"].any()
    assert any("identical routed experts" in n and "more read per decode step" in n for n in result.notes)


def router_margins(path, ids) -> np.ndarray:
    """[positions]: the smallest gap, over MoE layers, between the k-th and (k+1)-th router probability."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    k = model.config.num_experts_per_tok
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_router_logits=True)
    gaps = []
    for logits in out.router_logits:
        p = torch.softmax(logits.float(), -1).sort(-1, descending=True).values
        gaps.append((p[:, k - 1] - p[:, k]).numpy())
    return np.min(gaps, axis=0)


def assert_quantized_matches_dequantized(path, quant, tmp_path, packed_names, n_tokens=None) -> str:
    """Two parts. (1) The file holds exactly our quantized model: every tensor, dequantized by gguf's
    reference dequantizer, equals the f32 export of our dequantized checkpoint (which matches transformers to
    1e-3; zero-padded to whole blocks), and `packed_names` stay in the quant type. (2) llama.cpp's kernels on it stay within KERNEL_TOL of
    transformers on our dequantized weights at every position, except where routing is discontinuous:
    llama.cpp's 8-bit activations may flip a near-tie top-k choice (measured: one of 40 positions at Q4_0,
    router gap 2e-4, error 1.04 = 0.124 x std; all others <= 0.028 x std at Q4_0 and Q8_0), so such
    positions must have a router gap < 1e-2 and be <= 5% of them. Returns the file's architecture."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from qwen2_edge.exporters.registry import get_format
    from qwen2_edge.model.checkpoint import open_checkpoint
    from qwen2_edge.quant import quantize_model
    from qwen2_edge.runtimes.llamacpp import LlamaCppSession
    from qwen2_edge.runtimes.reference import ReferenceSession

    qmodel = quantize_model(open_checkpoint(path, need_tokenizer=True), get_format("gguf").scheme(quant))
    result, _ = _export(path, tmp_path, quant, qmodel=qmodel)
    deq_path = qmodel.save_dequantized(tmp_path / "deq")
    f32, _ = _export(deq_path, tmp_path, "f32", name="deq-f32.gguf")
    packed = {t.name: t for t in GGUFReader(str(result.path)).tensors}
    floats = {t.name: np.asarray(t.data, np.float32) for t in GGUFReader(str(f32.path)).tensors}
    assert set(packed) == set(floats)
    for name in packed_names:
        assert packed[name].tensor_type.name == quant.upper(), name
    for name, t in packed.items():
        values = dequantize(np.asarray(t.data), t.tensor_type).reshape([int(n) for n in reversed(t.shape)])
        # FFN widths are zero-padded to whole blocks in quantized files only
        pad = [(0, v - f) for v, f in zip(values.shape, floats[name].shape, strict=True)]
        assert np.array_equal(values, np.pad(floats[name], pad)), name

    deq = ReferenceSession(deq_path)
    flt = ReferenceSession(path)
    ids = _ids(flt, n_tokens) if n_tokens else _ids(flt)
    with LlamaCppSession(result.path, threads=2, kv_cache="f32") as s:
        got = s.logits(ids)
    want = deq.logits(ids)
    err = np.abs(got - want).max(-1)  # per position
    bound = KERNEL_TOL * want.std()
    flipped = np.flatnonzero(err > bound)
    margins = router_margins(deq_path, ids)
    err_quant = np.abs(want - flt.logits(ids)).max()
    print(
        f"{quant}: llama.cpp vs dequantized max|dlogit| {err.max():.3f} = {err.max() / want.std():.4f} x std "
        f"(outside near-ties {np.delete(err, flipped).max() / want.std():.4f} x std; positions over "
        f"{KERNEL_TOL} x std: {flipped.tolist()}, router gaps {margins[flipped].round(4).tolist()}); "
        f"dequantized vs float {err_quant:.3f}; top-1 agreement {(got.argmax(-1) == want.argmax(-1)).mean():.3f}"
    )
    assert len(flipped) <= 0.05 * len(ids)
    assert (margins[flipped] < 1e-2).all()
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.95
    if quant != "q8_0":  # 4-bit weights err far more than 8-bit activations
        assert np.delete(err, flipped).max() < 0.15 * err_quant
    return architecture(result.path)


@pytest.mark.parametrize("quant", ["q8_0", "q4_0"])
def test_quantized_matches_our_dequantized_model(quant, constgate, tmp_path):
    """Experts and the fused [gate; up] shared expert stay packed (assert_quantized_matches_dequantized)."""
    names = ["blk.0.ffn_up_exps.weight", "blk.0.ffn_up_shexp.weight"]
    arch = assert_quantized_matches_dequantized(constgate["all_moe_sliding"], quant, tmp_path, names)
    assert arch == "granite_swa"


def test_learned_shared_gate_is_refused(fixture_dir, tmp_path):
    """The plain moe_sliding fixture has random (learned) gates: no exact encoding, one line, nothing written."""
    with pytest.raises(UnsupportedError) as e:
        _export(fixture_dir("moe_sliding"), tmp_path, "f32")
    msg = str(e.value)
    assert "\n" not in msg and "sliding-window" in msg and "--format onnx" in msg
    assert "constant shared-expert gate" in msg and "layers [0, 1, 2]" in msg
    assert "step35" in msg and "qwen2moe" in msg and "granite_swa" in msg  # each candidate says why not
    assert not list(tmp_path.iterdir())


def test_linear_rope_with_windows_and_unnormalized_top3_is_refused():
    """Neither step35 (no RoPE scaling on sliding layers) nor granite_swa (renormalizes; 1/3 copies) nor
    qwen2moe (full attention) computes it: refused, naming each reason."""
    from qwen2_edge.exporters.gguf.encoding import choose_encoding
    from qwen2_edge.model.spec import spec_from_dict
    from qwen2_edge.testing.fixtures import config_dict

    spec = spec_from_dict(
        config_dict(variant("moe_sliding_k3", rope_scaling={"rope_type": "linear", "factor": 2.0}))
    )
    with pytest.raises(UnsupportedError) as e:
        choose_encoding(spec, "m", weights=lambda n: np.zeros(1))
    msg = str(e.value)
    assert "\n" not in msg and "RoPE scaling" in msg and "top_k=3" in msg and "norm_topk_prob=false" in msg
