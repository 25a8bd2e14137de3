"""`qwen2-edge check`: exact artifacts pass, a corrupted one fails and is marked, JSON/HTML are sound."""

from __future__ import annotations

import base64
import io
import json
import math
import re

import numpy as np
import pytest
import torch

from qwen2_edge.cli import main
from qwen2_edge.model.checkpoint import open_checkpoint
from qwen2_edge.quant import quantize_model
from qwen2_edge.quant.scheme import QuantScheme
from qwen2_edge.testing.hf_writer import write_hf_checkpoint

# Small but real: 3 chunks of 64 tokens (scored from 32), 2 greedy prompts of 8 new tokens.
FAST = ["--ctx", "64", "--chunks", "3", "--greedy-prompts", "2", "--greedy-tokens", "8"]
# The "moe" fixture is untied (soft output distributions, unlike tied random fixtures whose softmax is
# one-hot) and has MoE layers 0 and 2 around a dense layer 1, so the expert-load plot is exercised.
FIXTURE = "moe"
# Corruption: one weight tensor scaled by 10 (a wrong-scale export bug).
CORRUPT = ("model.layers.0.mlp.shared_expert.down_proj.weight", 10.0)


def corrupted_copy(src, out, name=CORRUPT[0], factor=CORRUPT[1]):
    ckpt = open_checkpoint(src)
    tensors = {n: ckpt.tensor(n) for n in ckpt.names()}
    tensors[name] = tensors[name] * factor
    return write_hf_checkpoint(ckpt, tensors, out)


@pytest.fixture(scope="module")
def hf_run(fixture_dir, tmp_path_factory):
    """One CLI run over: the checkpoint itself, an int8-dequantized copy (float32), a corrupted copy."""
    src = fixture_dir(FIXTURE)
    tmp = tmp_path_factory.mktemp("check")
    deq = quantize_model(open_checkpoint(src), QuantScheme(8)).save_dequantized(tmp / "deq_int8")
    bad = corrupted_copy(src, tmp / "corrupted")
    out_json, out_html = tmp / "check.json", tmp / "report.html"
    rc = main(["check", str(src), str(src), str(deq), str(bad), *FAST,
               "--json", str(out_json), "--report", str(out_html)])  # fmt: skip
    return {"src": src, "rc": rc, "json": json.loads(out_json.read_text()), "html": out_html}


def test_exact_and_dequantized_pass_corrupted_fails(hf_run, capsys):
    assert hf_run["rc"] == 1  # one artifact fails -> exit 1
    same, deq, bad = hf_run["json"]["artifacts"]
    # The checkpoint against itself: every difference is exactly zero.
    assert (
        same["passed"] and same["kld_mean"] == 0 and same["top1_agreement"] == 1 and same["max_dlogit"] == 0
    )
    assert same["greedy_match"] == 1 and same["greedy_first_diff"] == [None, None]
    # int8 dequantized: small but nonzero differences, inside the default gates.
    assert deq["passed"], deq["failed"]
    assert 0 < deq["kld_mean"] < 1e-3 and deq["kld_max"] >= deq["kld_p99"] >= deq["kld_mean"] * 0.5
    # The corrupted copy fails on KLD and top-1 and says so.
    assert not bad["passed"] and {"max_kld", "min_top1"} <= set(bad["failed"])
    assert bad["kld_mean"] > 0.05 > deq["kld_mean"] and bad["top1_agreement"] < 0.9
    assert not hf_run["json"]["passed"]


def test_json_keys_and_reference_ppl_equals_exp_mean_ce(hf_run, hf_model):
    doc = hf_run["json"]
    required = ["path", "format", "runtime", "quant", "ppl", "delta_ppl", "kld_mean", "kld_p99", "kld_max",
                "top1_agreement", "rms_dp", "greedy_match", "passed"]  # fmt: skip
    for a in doc["artifacts"]:
        assert all(k in a for k in required), set(required) - set(a)
        assert a["format"] == "hf" and a["runtime"] == "transformers" and a["quant"] == "f32"
        assert 0 <= a["top1_agreement"] <= 1 and a["kld_p99"] <= a["kld_max"] and a["rms_dp"] >= 0
        assert a["tokens"] == doc["reference"]["tokens"] == 3 * (64 - 1 - 32)
    # Independent perplexity: transformers tokenizer + model, torch cross-entropy on the scored positions.
    from transformers import AutoTokenizer

    from qwen2_edge.data.corpus import heldout_text

    ctx, start = doc["ctx"], doc["score_from"]
    ids = AutoTokenizer.from_pretrained(hf_run["src"])(heldout_text(), add_special_tokens=False)["input_ids"]
    model = hf_model(hf_run["src"])
    losses = []
    with torch.inference_mode():
        for c in range(doc["chunks"]):
            x = torch.tensor([ids[c * ctx : (c + 1) * ctx]])
            logits = model(x).logits[0].double()
            losses.append(
                torch.nn.functional.cross_entropy(logits[start:-1], x[0, start + 1 :], reduction="none")
            )
    expected = math.exp(torch.cat(losses).mean().item())
    assert doc["reference"]["ppl"] == pytest.approx(expected, rel=1e-6)
    assert doc["artifacts"][0]["ppl"] == pytest.approx(expected, rel=1e-6)
    # Expert load: every scored and unscored token of every chunk routes top_k=2 selections per MoE layer.
    load = doc["expert_load"]
    assert load["layers"] == [0, 2] and load["tokens"] == doc["chunks"] * ctx
    assert [sum(row) for row in load["counts"]] == [2 * load["tokens"]] * 2


def test_html_report_images_decode(hf_run):
    import matplotlib.image as mpimg

    text = hf_run["html"].read_text()
    assert "FAIL" in text and "corrupted" in text and "<table>" in text
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) == 3  # KLD by position, bars, MoE expert load
    for b64 in images:
        raw = base64.b64decode(b64)
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        img = mpimg.imread(io.BytesIO(raw), format="png")
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100 and np.ptp(img) > 0


def test_bad_inputs_exit_2(fixture_dir, tmp_path, capsys):
    src = str(fixture_dir(FIXTURE))
    capsys.readouterr()  # making the fixture may print progress bars
    assert main(["check", src, str(tmp_path / "missing.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.onnx" in err[0] and "no such file" in err[0]
    (tmp_path / "junk.bin").write_bytes(b"\0" * 64)
    assert main(["check", src, str(tmp_path / "junk.bin")]) == 2
    assert "not a recognized model artifact" in capsys.readouterr().err
    assert main(["check", src, src, "--text", str(tmp_path / "none.txt")]) == 2
    assert main(["check", src, src, "--chunks", "0"]) == 2


def test_default_ctx_exceeds_sliding_window():
    from qwen2_edge.model.spec import spec_from_dict
    from qwen2_edge.testing.fixtures import FIXTURES, config_dict
    from qwen2_edge.validation.compare import DEFAULT_CTX, default_ctx

    cfg = config_dict(FIXTURES["sliding"])
    assert default_ctx(spec_from_dict(cfg)) == DEFAULT_CTX > 8
    spec = spec_from_dict({**cfg, "sliding_window": 1024})
    assert spec.max_window == 1024 and default_ctx(spec) == 2048
    assert default_ctx(spec_from_dict(config_dict(FIXTURES["dense"]))) == DEFAULT_CTX


def test_delta_ppl_error_matches_llamacpp_covariance_formula():
    from qwen2_edge.validation.summary import delta_perplexity, mean_and_stderr

    rng = np.random.default_rng(0)
    ref = rng.gamma(2.0, 1.5, 500)
    cand = ref + rng.normal(0, 0.1, 500)
    d, err = delta_perplexity(cand, ref)
    # llama.cpp: sqrt(ppl_unc^2 + ppl_base_unc^2 - 2 ppl_cov), ppl_cov from the NLL covariance.
    m, e = mean_and_stderr(cand)
    mr, er = mean_and_stderr(ref)
    cov = (np.mean(cand * ref) - cand.mean() * ref.mean()) / (len(ref) - 1)
    p, pr = math.exp(m), math.exp(mr)
    assert d == pytest.approx(p - pr)
    assert err == pytest.approx(math.sqrt((p * e) ** 2 + (pr * er) ** 2 - 2 * p * pr * cov), rel=1e-9)
    assert err < 0.2 * min(p * e, pr * er)  # correlated runs: Δppl is far better determined than either


# -- other runtimes: exact f32 exports pass, an export of the corrupted checkpoint fails ----------------
def _runtime_available(fmt: str) -> bool:
    from qwen2_edge.runtimes.registry import RUNTIMES

    return any(e.format == fmt for e in RUNTIMES)


@pytest.mark.parametrize("fmt,ext", [("onnx", ""), ("gguf", ".gguf")])
def test_f32_export_passes_and_corrupted_export_fails(fmt, ext, fixture_dir, tmp_path):
    if not _runtime_available(fmt):
        pytest.skip(f"no {fmt} runtime registered on this branch yet")
    from qwen2_edge.exporters.api import export_model

    src = fixture_dir(FIXTURE)
    good = export_model(src, fmt=fmt, quant="f32", out=tmp_path / f"good{ext}").path
    bad_src = corrupted_copy(src, tmp_path / "corrupted_hf")
    bad = export_model(bad_src, fmt=fmt, quant="f32", out=tmp_path / f"corrupted{ext}").path
    out = tmp_path / "c.json"
    assert main(["check", str(src), str(good), str(bad), *FAST, "--json", str(out)]) == 1
    g, b = json.loads(out.read_text())["artifacts"]
    assert g["format"] == b["format"] == fmt
    assert g["passed"] and g["kld_mean"] < 1e-6 and g["top1_agreement"] == 1 and g["greedy_match"] == 1
    assert g["max_dlogit"] < 1e-5  # f32 in an f32 cache: 9.5e-7 (llama.cpp's default f16 cache: 9.1e-5)
    assert g["tokenizer_match"]
    assert not b["passed"] and "max_kld" in b["failed"]


def test_token_stats_match_torch():
    from qwen2_edge.validation.token_stats import compare_logits

    g = torch.Generator().manual_seed(0)
    ref = torch.randn(300, 50, generator=g, dtype=torch.float64) * 3
    cand = ref + 0.3 * torch.randn(300, 50, generator=g, dtype=torch.float64)
    t = torch.randint(0, 50, (300,), generator=g)
    s = compare_logits(ref.float().numpy(), cand.float().numpy(), t.numpy())
    r, c = ref.float().double(), cand.float().double()  # what the runtimes hand over: float32
    lr, lc = r.log_softmax(-1), c.log_softmax(-1)
    kld = torch.nn.functional.kl_div(lc, lr, log_target=True, reduction="none").sum(-1)
    np.testing.assert_allclose(s.kld, kld.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(s.nll, torch.nn.functional.cross_entropy(c, t, reduction="none"), rtol=1e-12)
    np.testing.assert_allclose(
        s.nll_ref, torch.nn.functional.cross_entropy(r, t, reduction="none"), rtol=1e-12
    )
    top = r.argmax(-1)
    np.testing.assert_array_equal(s.top1, (top == c.argmax(-1)).numpy())
    rows = torch.arange(300)
    np.testing.assert_allclose(s.dp, (lc.exp()[rows, top] - lr.exp()[rows, top]).numpy(), atol=1e-12)
    np.testing.assert_allclose(s.max_dlogit, (c - r).abs().amax(-1).numpy(), rtol=1e-12)
    assert 0 < s.top1.mean() < 1 and (s.kld > 0).all()
    # A runtime that drops the padding rows: compared over the common rows, renormalized there.
    narrow = compare_logits(ref.float().numpy(), cand[:, :40].float().numpy(), t.clamp(max=39).numpy())
    wide = compare_logits(ref[:, :40].float().numpy(), cand[:, :40].float().numpy(), t.clamp(max=39).numpy())
    np.testing.assert_array_equal(narrow.kld, wide.kld)


def test_broken_logits_fail_every_gate_without_crashing():
    from qwen2_edge.validation.gates import DEFAULT_LIMITS, evaluate
    from qwen2_edge.validation.summary import summarize
    from qwen2_edge.validation.token_stats import compare_logits

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(20, 30)).astype(np.float32)
    t = rng.integers(0, 30, 20)
    huge = ref * 1e4  # mean NLL in the thousands: perplexity saturates to inf instead of overflowing
    nan = ref.copy()
    nan[3, 5] = np.nan
    for cand in (huge, nan):
        summary = summarize(compare_logits(ref, cand, t))
        gates = evaluate(summary, DEFAULT_LIMITS)
        assert not gates["max_kld"] and not gates["max_dppl"], (summary, gates)
    assert summarize(compare_logits(ref, huge, t))["ppl"] == math.inf
    assert not evaluate(summarize(compare_logits(ref, nan, t)), DEFAULT_LIMITS)["finite"]


def test_kv_cache_bug_fails_the_decode_gate(fixture_dir):
    """Guards the decode-vs-prefill gate: a runtime whose cache forgets the context must fail it."""
    from qwen2_edge.runtimes.reference import ReferenceSession
    from qwen2_edge.validation.compare import CheckOptions, check_artifacts

    class ForgetfulCache(ReferenceSession):  # the real transformers model, with a stale-cache bug
        def append(self, ids):
            self.reset()
            return super().append(ids)

    path = fixture_dir(FIXTURE)
    good, bad = ReferenceSession(path), ForgetfulCache(path)
    res = check_artifacts(path, [good, bad], CheckOptions(ctx=48, chunks=1, greedy_prompts=0, progress=False))
    g, b = res.artifacts
    assert g.passed and g.summary["decode_kld_max"] < 1e-9
    assert b.failed == ["max_decode_kld"] and b.summary["decode_kld_max"] > 1e-2
    assert b.summary["kld_mean"] == 0  # prefill itself is untouched by the bug


def test_gguf_quant_label_from_file_type():
    # Guards the `quant` key of check's JSON for GGUF artifacts (it read "f32" for every file before).
    from qwen2_edge.runtimes.llamacpp import file_type_name

    assert [file_type_name(t) for t in (0, 1, 2, 3, 7, 15, None)] == [
        "f32", "f16", "q4_0", "q4_1", "q8_0", "q4_k_m", "f32"
    ]  # fmt: skip


def test_context_longer_than_the_runtime_allows_is_exit_2(fixture_dir, tmp_path, capsys):
    from qwen2_edge.exporters.api import export_model
    from qwen2_edge.runtimes.llamacpp import LlamaCppSession
    from qwen2_edge.validation.compare import CheckOptions, check_artifacts

    src = fixture_dir("dense_untied")
    gguf = export_model(src, fmt="gguf", quant="f32", out=tmp_path / "d.gguf").path
    small = LlamaCppSession(gguf, n_ctx=32, kv_cache="f32")  # a context shorter than the check's chunks
    from qwen2_edge.errors import UserError

    with pytest.raises(UserError, match="smaller --ctx"):
        check_artifacts(src, [small], CheckOptions(ctx=64, chunks=1, greedy_prompts=0, progress=False))


def test_trained_teacher_quantized_exports_rank_as_expected(tmp_path):
    """On the trained built-in teacher (real distributions), the gates and statistics order the quants."""
    from qwen2_edge.exporters.api import export_model
    from qwen2_edge.validation.compare import CheckOptions, check_artifacts

    arts = [
        export_model("builtin:teacher", fmt=f, quant=q, out=tmp_path / name).path
        for f, q, name in [("gguf", "q8_0", "q8.gguf"), ("gguf", "q4_0", "q4.gguf"), ("onnx", "int4", "int4")]
    ]
    res = check_artifacts(
        "builtin:teacher", arts, CheckOptions(ctx=128, chunks=3, greedy_prompts=0, progress=False)
    )
    q8, q4, int4 = (a.summary for a in res.artifacts)
    assert [a.quant for a in res.artifacts] == ["q8_0", "q4_0", "int4"]
    assert res.passed, [a.failed for a in res.artifacts]
    assert 0 < q8["kld_mean"] < q4["kld_mean"] / 4 and q8["top1_agreement"] > q4["top1_agreement"]
    # ONNX int4 and GGUF q4_0 hold the same codes and both quantize activations to int8: their
    # distance from the reference must agree closely although the runtimes share no code.
    assert int4["kld_mean"] == pytest.approx(q4["kld_mean"], rel=0.1)
