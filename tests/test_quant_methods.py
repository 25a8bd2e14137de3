"""Quantization methods on real tiny checkpoints: GPTQ vs RTN measured end to end, MoE calibration,
policies, calibration input errors, and the quant-scan command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from qwen2_edge.errors import UserError
from qwen2_edge.model.checkpoint import open_checkpoint
from qwen2_edge.model.spec import MoEFFN
from qwen2_edge.model.tokenizer import TextTokenizer
from qwen2_edge.quant import POLICIES, QuantScheme, quantize_model, quantize_rtn
from qwen2_edge.quant.apply import apply_quantized
from qwen2_edge.quant.calibration import calibration_tokens
from qwen2_edge.quant.methods import METHODS
from qwen2_edge.runtimes.reference import load_reference_model
from qwen2_edge.validation.metrics import mean_kld, perplexity, top1_agreement


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The tiny models here are dominated by per-op overhead; extra threads only contend on shared CI cores.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def heldout_ids(path, n: int) -> torch.Tensor:
    from qwen2_edge.data.corpus import heldout_text

    return torch.tensor([TextTokenizer(path).encode(heldout_text())[:n]])


@torch.no_grad()
def kld_to_float(ckpt, qmodel, ids) -> float:
    ref = load_reference_model(ckpt)(input_ids=ids).logits[0]
    m = load_reference_model(ckpt)
    apply_quantized(m, qmodel.tensors)
    return mean_kld(ref, m(input_ids=ids).logits[0])


def test_methods_registry():
    assert {"rtn", "gptq"} <= set(METHODS)


def test_unknown_method_is_user_error(fixture_dir):
    ckpt = open_checkpoint(fixture_dir("dense"))
    with pytest.raises(UserError, match="unknown quantization method 'awq9'"):
        quantize_model(ckpt, QuantScheme(4), "default", method="awq9")


def test_rtn_method_is_per_tensor_rtn(fixture_dir):
    ckpt = open_checkpoint(fixture_dir("moe"))
    q = quantize_model(ckpt, QuantScheme(4), "all", method="rtn")
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.experts.down_proj"):
        ref = quantize_rtn(name, ckpt.canonical(name).numpy(), QuantScheme(4))
        np.testing.assert_array_equal(q.tensors[name].codes, ref.codes)
    assert q.tensors["model.layers.0.mlp.experts.down_proj"].codes.shape == (4, 64, 32)


@pytest.mark.parametrize("fixture", ["moe", "dense_untied"])
def test_gptq_beats_rtn_on_heldout_kld(fixture_dir, fixture):
    """Fast variant of the teacher test: GPTQ int4 has lower KLD to the float model than RTN int4."""
    path = fixture_dir(fixture)
    ckpt = open_checkpoint(path)
    ids = heldout_ids(path, 384)
    scheme = QuantScheme(4, 32)
    rtn = quantize_model(ckpt, scheme, "all", method="rtn")
    gptq = quantize_model(ckpt, scheme, "all", method="gptq", calib_tokens=1024, seq_len=256, progress=False)
    k_rtn, k_gptq = kld_to_float(ckpt, rtn, ids), kld_to_float(ckpt, gptq, ids)
    assert k_gptq < k_rtn, (k_gptq, k_rtn)
    assert set(gptq.tensors) == set(rtn.tensors)  # same tensors quantized, same schemes
    for name, t in gptq.tensors.items():
        assert t.scheme == rtn.tensors[name].scheme and t.codes.shape == rtn.tensors[name].codes.shape
    # MoE-aware calibration: each routed token is counted by exactly top_k experts.
    assert gptq.info["calibration"]["tokens"] == 1024
    for layer in ckpt.spec.layers:
        if isinstance(layer.ffn, MoEFFN):
            row = gptq.info["experts"][f"model.layers.{layer.index}.mlp.experts"]
            assert sum(row["tokens"]) == 1024 * layer.ffn.top_k
            assert len(row["tokens"]) == layer.ffn.num_experts


def test_expert_fallback_rule(fixture_dir):
    """Experts below min_expert_tokens are round-to-nearest (bit-identical to RTN of the float weights)."""
    ckpt = open_checkpoint(
        fixture_dir("moe_sliding")
    )  # also covers sliding-window layers and tied embeddings
    scheme = QuantScheme(4)
    q = quantize_model(
        ckpt, scheme, "default", method="gptq", calib_tokens=256, seq_len=128,
        min_expert_tokens=10**9, progress=False,
    )  # fmt: skip
    assert q.tensors["model.embed_tokens.weight"].scheme.bits == 8 and "lm_head.weight" not in q.tensors
    for layer in (0, 1, 2):
        row = q.info["experts"][f"model.layers.{layer}.mlp.experts"]
        assert row["rtn_fallback"] == list(range(8))
        for proj in ("gate_proj", "up_proj", "down_proj"):
            name = f"model.layers.{layer}.mlp.experts.{proj}"
            ref = quantize_rtn(name, ckpt.canonical(name).numpy(), scheme)
            np.testing.assert_array_equal(q.tensors[name].codes, ref.codes)
            np.testing.assert_array_equal(q.tensors[name].scales, ref.scales)
    # Router and shared-expert gate stay float under the default policy.
    assert "model.layers.0.mlp.gate.weight" not in q.tensors
    assert "model.layers.0.mlp.shared_expert_gate.weight" not in q.tensors


def test_policy_by_name_and_pattern_overrides(fixture_dir):
    ckpt = open_checkpoint(fixture_dir("moe"))
    pol = POLICIES["default"].with_overrides(
        [
            ("*.self_attn.q_proj.weight", "float"),
            ("*.mlp.experts.*", "int8"),
            ("model.layers.2.*", "int4_asym"),
        ]
    )
    q = quantize_model(ckpt, QuantScheme(4), pol, method="rtn")
    plan = {row["tensor"]: row["quant"] for row in q.plan()}
    assert plan["model.embed_tokens.weight"] == "int8_b32"  # policy row
    assert plan["lm_head.weight"] == "int8_b32"
    assert plan["model.layers.0.self_attn.q_proj.weight"] == "float"  # override wins
    assert plan["model.layers.0.self_attn.k_proj.weight"] == "int4_b32"  # --quant
    assert plan["model.layers.0.mlp.experts.gate_proj"] == "int8_b32"
    assert plan["model.layers.2.mlp.experts.gate_proj"] == "int8_b32"  # first matching override wins
    assert plan["model.layers.2.self_attn.k_proj.weight"] == "int4_asym_b32"
    assert plan["model.layers.0.mlp.gate.weight"] == "float"  # router
    assert plan["model.layers.0.input_layernorm.weight"] == "float"  # 1-D never quantized
    attn = quantize_model(ckpt, QuantScheme(4), "attn-int8", method="rtn")
    assert attn.tensors["model.layers.1.self_attn.o_proj.weight"].scheme.bits == 8
    assert attn.tensors["model.layers.1.mlp.down_proj.weight"].scheme.bits == 4


def test_calibration_files_and_errors(fixture_dir, tmp_path):
    tok = TextTokenizer(fixture_dir("dense"))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(UserError) as e:
        calibration_tokens(tok, [empty], 256)
    assert str(empty) in str(e.value) and "token" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="not found"):
        calibration_tokens(tok, [tmp_path / "missing.txt"], 256)
    text = tmp_path / "calib.txt"
    text.write_text("def f(x):\n    return x + 1\n" * 200)
    cal = calibration_tokens(tok, [text], tokens=300, seq_len=100)
    assert cal.ids.shape == (3, 100)
    assert cal.ids[0].tolist() == tok.encode(text.read_text())[:100]
    default = calibration_tokens(tok, None, tokens=1000, seq_len=250)
    assert default.ids.shape == (4, 250) and "built-in" in default.source


def test_gptq_calibration_file_error_is_one_line(fixture_dir, tmp_path):
    bad = tmp_path / "short.txt"
    bad.write_text("hi")
    ckpt = open_checkpoint(fixture_dir("dense"))
    with pytest.raises(UserError, match="short.txt"):
        quantize_model(ckpt, QuantScheme(4), "default", method="gptq", calib=[str(bad)], progress=False)


@torch.no_grad()
def test_metrics_against_transformers(fixture_dir, hf_model):
    path = fixture_dir("dense")
    model = hf_model(path)
    ids = heldout_ids(path, 200)
    out = model(input_ids=ids, labels=ids)
    logits = out.logits[0]
    assert perplexity(logits.numpy(), ids[0].tolist()) == pytest.approx(float(torch.exp(out.loss)), rel=1e-5)
    other = logits + 0.3 * torch.randn_like(logits)
    ref_kl = torch.nn.functional.kl_div(
        torch.log_softmax(other.double(), -1), torch.log_softmax(logits.double(), -1), log_target=True,
        reduction="batchmean",
    )  # fmt: skip
    assert mean_kld(logits, other) == pytest.approx(float(ref_kl), rel=1e-9)
    assert mean_kld(logits, logits) == 0.0
    assert top1_agreement(logits, logits) == 1.0
    assert top1_agreement(logits, other) == pytest.approx(
        float((logits.argmax(-1) == other.argmax(-1)).double().mean())
    )


def test_quant_scan_cli_json(fixture_dir, capsys):
    from qwen2_edge.cli import main

    path = fixture_dir("moe")
    assert main(["quant-scan", str(path), "--tokens", "256", "--seq-len", "128", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    groups = {r["group"]: r for r in out["groups"]}
    assert {"embeddings", "lm_head", "attention q/k/v", "attention o", "dense FFN", "shared experts",
            "routed experts", "router + shared gate"} == set(groups)  # fmt: skip
    klds = [r["kld"] for r in out["groups"]]
    assert klds == sorted(klds, reverse=True) and all(k > 0 for k in klds)
    assert (
        main(["quant-scan", str(path), "--tokens", "128", "--seq-len", "128", "--per-layer", "--json"]) == 0
    )
    per_layer = {r["group"]: r for r in json.loads(capsys.readouterr().out)["groups"]}
    assert {"routed experts L0", "routed experts L2", "dense FFN L1", "attention o L2"} <= set(per_layer)
    assert per_layer["dense FFN L1"]["tensors"] == [
        f"model.layers.1.mlp.{p}_proj.weight" for p in ("gate", "up", "down")
    ]
    assert groups["routed experts"]["tensors"] == [
        f"model.layers.{i}.mlp.experts.{p}" for i in (0, 2) for p in ("gate_proj", "up_proj", "down_proj")
    ]


def test_quant_scan_bad_text_file(fixture_dir, tmp_path, capsys):
    from qwen2_edge.cli import main

    assert main(["quant-scan", str(fixture_dir("dense")), "--text", str(tmp_path / "nope.txt")]) == 2
    err = capsys.readouterr().err.strip()
    assert "nope.txt" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("fixture", ["dense", "sliding", "moe", "moe_sliding"])
@torch.no_grad()
def test_layerwise_forward_matches_transformers_layers(fixture_dir, fixture):
    """The GPTQ driver recomputes each layer's second half from o_proj's inputs; it must equal the
    transformers decoder layer (guards against a transformers layer change silently breaking GPTQ)."""
    from qwen2_edge.quant.methods.layerwise import layer_forward_by_parts, layer_kwargs

    ckpt = open_checkpoint(fixture_dir(fixture))
    model = load_reference_model(ckpt)
    ids = heldout_ids(fixture_dir(fixture), 64)
    kwargs = layer_kwargs(model, ids)
    h = model.model.embed_tokens(ids)
    for layer, kw in zip(model.model.layers, kwargs, strict=True):
        want = layer(h, **kw)
        torch.testing.assert_close(layer_forward_by_parts(layer, h, kw), want, rtol=1e-5, atol=1e-5)
        h = want
    # and the chain of layers is the model: final norm + lm_head reproduce the model's logits
    torch.testing.assert_close(
        model.lm_head(model.model.norm(h)), model(input_ids=ids).logits, rtol=1e-5, atol=1e-4
    )
