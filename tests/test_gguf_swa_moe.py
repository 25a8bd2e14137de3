"""Qwen2-MoE as llama.cpp's granite_swa with experts, run in llama.cpp and checked against transformers.

The fixture is `moe_sliding` (8 experts top-2, norm_topk_prob=true, window 8 on layers 0 and 2, layer 3
dense via mlp_only_layers, tied embeddings, 1 KV head) with every shared_expert_gate set to zero, which is
what a student distilled with shared_gate="constant" has. Tolerances as in test_gguf_export.py.
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


@pytest.fixture(scope="module")
def constgate(tmp_path_factory):
    """name -> checkpoint: "moe_sliding" and "moe" with zeroed shared-expert gates (the latter also with
    norm_topk_prob=true, so that qwen2moe cannot hold it and it goes to granite_swa without windows)."""
    from qwen2_edge.testing import FIXTURES, make_checkpoint
    from qwen2_edge.testing.fixtures import FixtureSpec

    root = tmp_path_factory.mktemp("constgate")
    moe = FIXTURES["moe"]
    specs = {
        "moe_sliding": FIXTURES["moe_sliding"],
        "moe": FixtureSpec(**{**moe.__dict__, "config": {**moe.config, "norm_topk_prob": True}}),
    }
    out = {}
    for name, spec in specs.items():
        out[name] = make_checkpoint(spec, root / name)
        zero_shared_gates(out[name])
    return out


@pytest.mark.parametrize("name", ["moe_sliding", "moe"])
def test_f32_logits_match_transformers(name, constgate, tmp_path):
    """40 tokens (5x the window): prefill, and the same positions through the KV cache."""
    from qwen2_edge.runtimes.llamacpp import LlamaCppSession
    from qwen2_edge.runtimes.reference import ReferenceSession

    result, ckpt = _export(constgate[name], tmp_path, "f32")
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
    """Experts in every layer (the dense layer 3 as copies under a zero router), fused shared gate/up,
    no shared-expert gate tensor, shared down projection halved, windows where transformers has them."""
    from gguf import GGUFReader

    result, ckpt = _export(constgate["moe_sliding"], tmp_path, "f32")
    r = GGUFReader(str(result.path))
    t = {x.name: np.asarray(x.data) for x in r.tensors}
    assert r.fields["general.architecture"].contents() == "granite_swa"
    assert r.fields["granite_swa.attention.sliding_window_pattern"].contents() == [True, False, True, False]
    assert all(f"blk.{i}.ffn_gate_exps.weight" in t for i in range(4))
    assert not any("ffn_gate_inp_shexp" in n or "ffn_gate_shexp" in n for n in t)
    assert not t["blk.3.ffn_gate_inp.weight"].any() and not t["blk.3.ffn_down_shexp.weight"].any()
    g = ckpt.tensor("model.layers.0.mlp.shared_expert.gate_proj.weight").numpy()
    u = ckpt.tensor("model.layers.0.mlp.shared_expert.up_proj.weight").numpy()
    d = ckpt.tensor("model.layers.0.mlp.shared_expert.down_proj.weight").numpy()
    assert np.array_equal(t["blk.0.ffn_up_shexp.weight"], np.concatenate([g, u]))
    assert np.array_equal(t["blk.0.ffn_down_shexp.weight"], d / 2)


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


@pytest.mark.parametrize("quant", ["q8_0", "q4_0"])
def test_quantized_matches_our_dequantized_model(quant, constgate, tmp_path):
    """Two parts. (1) The file holds exactly our quantized model: every tensor, dequantized by gguf's reference
    dequantizer, equals the f32 export of our dequantized checkpoint (which matches transformers to 1e-3).
    (2) llama.cpp's kernels on it stay within KERNEL_TOL of transformers on our dequantized weights at every
    position, except where routing is discontinuous: llama.cpp's 8-bit activations may flip a near-tie top-k
    choice (measured: one of 40 positions at Q4_0, router gap 2e-4, error 1.04 = 0.124 x std; all others
    <= 0.028 x std at Q4_0 and Q8_0), so such positions must have a router gap < 1e-2 and be <= 5% of them."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from qwen2_edge.exporters.registry import get_format
    from qwen2_edge.model.checkpoint import open_checkpoint
    from qwen2_edge.quant import quantize_model
    from qwen2_edge.runtimes.llamacpp import LlamaCppSession
    from qwen2_edge.runtimes.reference import ReferenceSession

    path = constgate["moe_sliding"]
    qmodel = quantize_model(open_checkpoint(path, need_tokenizer=True), get_format("gguf").scheme(quant))
    result, _ = _export(path, tmp_path, quant, qmodel=qmodel)
    deq_path = qmodel.save_dequantized(tmp_path / "deq")
    f32, _ = _export(deq_path, tmp_path, "f32", name="deq-f32.gguf")
    packed = {t.name: t for t in GGUFReader(str(result.path)).tensors}
    floats = {t.name: np.asarray(t.data, np.float32) for t in GGUFReader(str(f32.path)).tensors}
    assert set(packed) == set(floats)
    assert packed["blk.0.ffn_up_exps.weight"].tensor_type.name == quant.upper()  # experts stay packed
    assert packed["blk.0.ffn_up_shexp.weight"].tensor_type.name == quant.upper()  # fused [gate; up] too
    for name, t in packed.items():
        values = dequantize(np.asarray(t.data), t.tensor_type).reshape(floats[name].shape)
        assert np.array_equal(values, floats[name]), name

    deq = ReferenceSession(deq_path)
    flt = ReferenceSession(path)
    ids = _ids(flt)
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


def test_learned_shared_gate_is_refused(fixture_dir, tmp_path):
    """The plain moe_sliding fixture has random (learned) gates: no exact encoding, one line, nothing written."""
    with pytest.raises(UnsupportedError) as e:
        _export(fixture_dir("moe_sliding"), tmp_path, "f32")
    msg = str(e.value)
    assert "\n" not in msg and "sliding-window" in msg and "--format onnx" in msg
    assert "constant shared-expert gate" in msg and "layers [0, 1, 2]" in msg
    assert not list(tmp_path.iterdir())


def test_dense_layer_copies_need_power_of_two_top_k(tmp_path):
    """A hybrid's dense layer weighs its k copies 1/k: refused for k = 3 (1/3 is not a float)."""
    from qwen2_edge.testing import FIXTURES, make_checkpoint
    from qwen2_edge.testing.fixtures import FixtureSpec

    base = FIXTURES["moe_sliding"]
    spec = FixtureSpec(**{**base.__dict__, "config": {**base.config, "num_experts_per_tok": 3}})
    path = make_checkpoint(spec, tmp_path / "k3")
    zero_shared_gates(path)
    with pytest.raises(UnsupportedError, match="top_k=3") as e:
        _export(path, tmp_path, "f32")
    assert "\n" not in str(e.value) and "power of two" in str(e.value)


@pytest.mark.slow  # ~45 s: a 3-step distillation from the built-in teacher
def test_distilled_constant_gate_student_exports_exactly(tmp_path):
    """The demo's default student (MoE hybrid, 64-token window, norm_topk_prob, shared_gate="constant"),
    distilled a few steps from the built-in teacher: its gate is still exactly zero, and its GGUF is
    granite_swa with experts and matches transformers over 200 tokens (> 3x the window)."""
    import torch

    from qwen2_edge.data import corpus
    from qwen2_edge.distill.api import distill
    from qwen2_edge.distill.config import TrainConfig
    from qwen2_edge.distill.student import DEFAULT_STUDENT
    from qwen2_edge.runtimes.llamacpp import LlamaCppSession
    from qwen2_edge.runtimes.reference import ReferenceSession

    assert DEFAULT_STUDENT.shared_gate == "constant" and DEFAULT_STUDENT.norm_topk_prob
    data = tmp_path / "data.txt"
    data.write_text(corpus.heldout_text()[:40000])
    cfg = TrainConfig(steps=3, batch_size=2, warmup=1, lr=5e-3, eval_max_seqs=2, progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = distill("builtin:teacher", DEFAULT_STUDENT, [data], tmp_path / "student", cfg, seq_len=64)
    finally:
        torch.set_num_threads(threads)
    result, ckpt = _export(out, tmp_path, "f32")
    gate = ckpt.tensor("model.layers.0.mlp.shared_expert_gate.weight")
    assert not gate.any()  # frozen at zero through training
    # ... while the rest of the MoE layer did train
    assert ckpt.tensor("model.layers.0.mlp.gate.weight").abs().sum() > 0
    assert any("granite_swa with experts" in n for n in result.notes)
    ref = ReferenceSession(out)
    ids = ref.encode(corpus.heldout_text()[40000:60000])[:200]
    assert len(ids) == 200 and ckpt.spec.max_window == 64
    want = ref.logits(ids)
    with LlamaCppSession(result.path, threads=2, kv_cache="f32") as s:
        got = s.logits(ids)
    err = np.abs(got - want).max()
    print(f"distilled default student f32 granite_swa: max|dlogit| {err:.2e} over 200 tokens")
    assert err <= F32_TOL
