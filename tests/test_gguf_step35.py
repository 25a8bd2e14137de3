"""MoE hybrids as llama.cpp's step35: each dense layer written once, run in llama.cpp, checked against
transformers over 10x the window (prefill and token-by-token decode).

Checkpoints: `moe_sliding` with every shared_expert_gate zeroed (what a student distilled with
shared_gate="constant" has: 8 experts top-2, norm_topk_prob, window 8 on layers 0 and 2, layer 3 dense,
tied); `moe` with zeroed gates and norm_topk_prob (full attention: layer 0 gets a window no context
reaches); the `moe_sliding_k3` fixture (top-3 of 6, norm_topk_prob=false, no shared expert, window 8 on a
MoE and a dense layer, untied), which no other llama.cpp architecture holds.

Measured (2-vCPU AMD EPYC, f32 KV cache): f32 GGUF vs transformers max |dlogit| 1.5e-5 (moe_sliding),
2.3e-5 (moe_sliding_k3) over 80 tokens, prefill and decode alike -> bound 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest

from .test_gguf_export import _export, _ids
from .test_gguf_swa_moe import architecture, assert_quantized_matches_dequantized, variant, zero_shared_gates

STEP35_TOL = 1e-4
N_TOKENS = 80  # 10x the fixtures' window of 8


@pytest.fixture(scope="module")
def hybrids(tmp_path_factory, fixture_dir):
    """name -> a MoE-hybrid checkpoint that goes to step35."""
    from qwen2_edge.testing import make_checkpoint

    root = tmp_path_factory.mktemp("step35")
    out = {"moe_sliding_k3": fixture_dir("moe_sliding_k3")}
    for name, spec in {"moe_sliding": variant("moe_sliding"), "moe": variant("moe", norm_topk_prob=True)}.items():
        out[name] = make_checkpoint(spec, root / name)
        zero_shared_gates(out[name])
    return out


def _parity(path, gguf) -> tuple[float, float]:
    """max |dlogit| vs transformers over N_TOKENS: all positions at once, then 10 + one token at a time."""
    from qwen2_edge.runtimes.llamacpp import LlamaCppSession
    from qwen2_edge.runtimes.reference import ReferenceSession

    ref = ReferenceSession(path)
    ids = _ids(ref, N_TOKENS)
    want = ref.logits(ids)
    with LlamaCppSession(gguf, threads=2, kv_cache="f32") as s:
        got = s.logits(ids)
        s.reset()
        inc = np.concatenate([s.append(ids[:10])] + [s.append([t]) for t in ids[10:]])
    assert got.shape == want.shape == inc.shape
    return float(np.abs(got - want).max()), float(np.abs(inc - want).max())


@pytest.mark.parametrize("name", ["moe_sliding", "moe", "moe_sliding_k3"])
def test_f32_logits_match_transformers(name, hybrids, tmp_path):
    result, _ = _export(hybrids[name], tmp_path, "f32")
    assert architecture(result.path) == "step35"
    assert any("llama.cpp architecture step35" in n for n in result.notes)
    err, err_inc = _parity(hybrids[name], result.path)
    print(f"{name} f32 step35: max|dlogit| prefill {err:.2e}, decode {err_inc:.2e} over {N_TOKENS} tokens")
    assert err <= STEP35_TOL and err_inc <= STEP35_TOL


def test_rope_dimension_count_is_written_doubled(hybrids, tmp_path, monkeypatch):
    """step35 halves rope.dimension_count on full-attention layers; written as head_dim it would rotate half
    of each head there, and the logits past position 0 move far beyond the tolerance. Guards the 2x."""
    from qwen2_edge.exporters.gguf.archs import Step35

    path = hybrids["moe_sliding"]
    head_dim = 64 // 4
    plain = Step35.arch_metadata

    def halved(self):
        return [(k, head_dim if k == "step35.rope.dimension_count" else v) for k, v in plain(self)]

    monkeypatch.setattr(Step35, "arch_metadata", halved)
    result, _ = _export(path, tmp_path, "f32")
    err, _ = _parity(path, result.path)
    assert err > 100 * STEP35_TOL


def _ckpt_elements(ckpt) -> int:
    return sum(int(np.prod(info.shape)) for info in ckpt.tensors.values())


def test_dense_layer_written_once(hybrids, tmp_path):
    """The dense layer 3 is one plain SwiGLU equal to the checkpoint's (no router, no expert copies), the
    experts keep their own width, the shared down projection is halved (sigmoid(0)), and the file holds
    exactly the checkpoint's weights: minus the constant shared-expert gates, plus the tied output copy."""
    from gguf import GGUFReader

    result, ckpt = _export(hybrids["moe_sliding"], tmp_path, "f32")
    r = GGUFReader(str(result.path))
    t = {x.name: np.asarray(x.data) for x in r.tensors}
    s = ckpt.spec
    H, V, E = s.hidden_size, s.vocab_size, 8

    def field(key):
        return r.fields[f"step35.{key}"].contents()

    assert sorted(n for n in t if n.startswith("blk.3.ffn")) == [
        "blk.3.ffn_down.weight", "blk.3.ffn_gate.weight", "blk.3.ffn_norm.weight", "blk.3.ffn_up.weight"
    ]  # fmt: skip
    for proj, gguf in (("gate_proj", "ffn_gate"), ("up_proj", "ffn_up"), ("down_proj", "ffn_down")):
        assert np.array_equal(t[f"blk.3.{gguf}.weight"], ckpt.tensor(f"model.layers.3.mlp.{proj}.weight").numpy())
    assert t["blk.0.ffn_gate_exps.weight"].shape == (E, 32, H)  # not widened to the dense 128
    d = ckpt.tensor("model.layers.0.mlp.shared_expert.down_proj.weight").numpy()
    assert np.array_equal(t["blk.0.ffn_down_shexp.weight"], d / 2)
    assert not any("shexp" in n and "gate_inp" in n for n in t) and not any("sinks" in n for n in t)
    q = ckpt.tensor("model.layers.0.self_attn.q_proj.weight").numpy()
    assert np.array_equal(t["blk.0.attn_q.weight"], q)  # NeoX RoPE, as Qwen2: no row permutation
    assert np.array_equal(t["output.weight"], t["token_embd.weight"])  # tied: step35 needs output.weight
    n_moe = 3
    assert sum(int(x.n_elements) for x in r.tensors) == _ckpt_elements(ckpt) - n_moe * H + V * H
    assert field("rope.dimension_count") == 2 * s.head_dim and field("rope.dimension_count_swa") == s.head_dim
    assert field("rope.freq_base_swa") == s.rope_theta
    assert field("attention.sliding_window") == 8
    assert field("attention.sliding_window_pattern") == [True, False, True, False]
    assert field("expert_gating_func") == 1 and field("expert_weights_norm") is True  # softmax, renormalized
    assert field("feed_forward_length") == 128 and field("expert_feed_forward_length") == 32


def test_no_shared_expert_gets_a_zero_one(hybrids, tmp_path):
    """step35 always adds a shared expert: a model without one gets an all-zero, 1-wide one (silu(0)*0 = 0)."""
    from gguf import GGUFReader

    result, ckpt = _export(hybrids["moe_sliding_k3"], tmp_path, "f32")
    r = GGUFReader(str(result.path))
    t = {x.name: np.asarray(x.data) for x in r.tensors}
    H = ckpt.spec.hidden_size
    for i in (0, 1, 3):
        for n in ("gate", "up", "down"):
            assert not t[f"blk.{i}.ffn_{n}_shexp.weight"].any()
        assert t[f"blk.{i}.ffn_gate_exps.weight"].shape == (6, 40, H)
    assert "blk.2.ffn_gate_inp.weight" not in t and t["blk.2.ffn_gate.weight"].shape == (128, H)
    assert r.fields["step35.expert_weights_norm"].contents() is False
    assert r.fields["step35.expert_used_count"].contents() == 3
    assert sum(int(x.n_elements) for x in r.tensors) == _ckpt_elements(ckpt) - 3 * H + 3 * (3 * H)


@pytest.mark.parametrize(("name", "quant"), [("moe_sliding", "q8_0"), ("moe_sliding", "q4_0"), ("moe_sliding_k3", "q4_0")])
def test_quantized_matches_our_dequantized_model(name, quant, hybrids, tmp_path):
    """The file is bit-exactly our quantized model and llama.cpp computes it (assert_quantized_matches_
    dequantized); experts, shared expert and the dense layer stay packed (the k3 experts, 40 wide, padded to
    64 with zero blocks)."""
    names = ["blk.0.ffn_up_exps.weight", "blk.0.ffn_down_exps.weight", f"blk.{2 if name.endswith('k3') else 3}.ffn_down.weight"]
    if name == "moe_sliding":
        names.append("blk.0.ffn_up_shexp.weight")
    arch = assert_quantized_matches_dequantized(hybrids[name], quant, tmp_path, names, N_TOKENS)
    assert arch == "step35"


def test_k_quant_loads_and_tracks_float(hybrids, tmp_path):
    """llama.cpp's own quantizer rewrites a step35 file (the 1-wide zero shared expert falls back to F16)."""
    from qwen2_edge.runtimes.llamacpp import LlamaCppSession
    from qwen2_edge.runtimes.reference import ReferenceSession

    path = hybrids["moe_sliding_k3"]
    result, _ = _export(path, tmp_path, "q4_k_m")
    ref = ReferenceSession(path)
    ids = _ids(ref)
    want = ref.logits(ids)
    with LlamaCppSession(result.path, threads=2, kv_cache="f32") as s:
        got = s.logits(ids)
    assert np.isfinite(got).all()
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()


@pytest.mark.parametrize("name", ["moe_sliding", "moe_sliding_k3"])
def test_byte_model_reads_the_model_once(name, hybrids, tmp_path):
    """bench's byte model on a step35 file reads what the float model reads (dense layers whole, top_k/E of
    the experts, shared expert and router): the HF inventory's count, minus the constant shared-expert gates
    llama.cpp never reads, plus the zero shared experts, plus one embedding row for a tied table (step35
    reads token_embd by row and its output.weight copy in full)."""
    from qwen2_edge.bench.bytes_per_token import bytes_per_token, inventory

    result, ckpt = _export(hybrids[name], tmp_path, "f32")
    s = ckpt.spec
    H = s.hidden_size
    n_moe = sum(1 for layer in s.layers if layer.ffn.kind == "moe")
    expected = bytes_per_token(inventory(hybrids[name], "hf"), 1).weights - 4 * n_moe * H
    if s.tie_word_embeddings:
        expected += 4 * H
    if name.endswith("k3"):
        expected += 4 * n_moe * 3 * H
    inv = inventory(result.path, "gguf")
    assert inv.geometry.expert_fraction == 3 / 6 if name.endswith("k3") else 2 / 8
    assert bytes_per_token(inv, 1).weights == expected


@pytest.mark.slow  # ~45 s: a 3-step distillation from the built-in teacher
def test_distilled_constant_gate_student_exports_exactly(tmp_path):
    """The demo's default student (MoE hybrid, 64-token window, norm_topk_prob, shared_gate="constant"),
    distilled a few steps from the built-in teacher: its gate is still exactly zero, and its GGUF is step35
    and matches transformers over 512 tokens (8x the window), prefill and decode (measured on the demo's
    60-step student: 4.3e-5 both)."""
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
    assert architecture(result.path) == "step35"
    ref = ReferenceSession(out)
    ids = ref.encode(corpus.heldout_text()[40000:80000])[:512]
    assert len(ids) == 512 and ckpt.spec.max_window == 64
    want = ref.logits(ids)
    with LlamaCppSession(result.path, threads=2, kv_cache="f32") as s:
        got = s.logits(ids)
        s.reset()
        inc = np.concatenate([s.append(ids[:64])] + [s.append([t]) for t in ids[64:]])
    err, err_inc = np.abs(got - want).max(), np.abs(inc - want).max()
    print(f"distilled default student f32 step35: max|dlogit| prefill {err:.2e}, decode {err_inc:.2e} over 512")
    assert err <= STEP35_TOL and err_inc <= STEP35_TOL
    # The same student as an ONNX folder (window-sized GroupQueryAttention cache): same bound, same 512 tokens.
    from qwen2_edge.exporters.onnx import export_onnx
    from qwen2_edge.model.checkpoint import open_checkpoint
    from qwen2_edge.runtimes.onnxruntime import OnnxSession

    folder = export_onnx(open_checkpoint(out), tmp_path / "student-onnx", "f32").path
    s = OnnxSession(folder, threads=2)
    got = s.logits(ids)
    s.reset()
    inc = np.concatenate([s.append(ids[:64])] + [s.append([t]) for t in ids[64:]])
    assert {s.kv_cache_rows()[c.index] for c in s.layout if c.windowed} == {64 + 16}  # window-sized buffer
    assert np.abs(got - want).max() <= STEP35_TOL and np.abs(inc - want).max() <= STEP35_TOL
