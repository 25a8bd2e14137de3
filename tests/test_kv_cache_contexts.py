"""KV-cache precision as a deployment setting (`--kv-cache` on run / bench / check / pipeline) and the
long-context benchmark (`bench --contexts`), on real runtimes and tiny fixtures.

Speeds are never asserted; the KV byte counts are exact and recomputed here from the fixture's config.
"""

from __future__ import annotations

import json

import pytest

from qwen2_edge.cli import main
from qwen2_edge.runtimes.llamacpp import LlamaCppSession
from qwen2_edge.runtimes.onnxruntime import OnnxSession
from qwen2_edge.runtimes.options import KV_CACHE_TYPES

PROMPT = "def parse_args(argv):\n    "
FAST_CHECK = ["--ctx", "48", "--chunks", "2", "--greedy-prompts", "2", "--greedy-tokens", "6"]
# Bytes per cached K/V element, written out independently of bench/bytes_per_token.py: llama.cpp's ggml
# blocks (q8_0: 32 int8 + f16 scale = 34 bytes per 32; q4_0: 32 nibbles + f16 scale = 18 per 32).
ELEMENT = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
# onnxruntime's quantized cache: int8 / int4 codes plus float32 scales per channel (K and V, each layer).
ONNX_QUANT = {"q8_0": 1.0, "q4_0": 0.5}


def _one_line_error(capsys, command: str) -> str:
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert len(lines) == 1, out.err
    assert lines[0].startswith(f"qwen2-edge {command}: error:"), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def sliding_exports(fixture_dir, tmp_path_factory):
    """The windowed fixture (layer 0 full attention, layers 1-2 window 8, 1 KV head of 16) in both formats."""
    from qwen2_edge.exporters.api import export_model

    tmp = tmp_path_factory.mktemp("kv")
    src = fixture_dir("sliding")
    return {
        "src": src,
        "onnx": export_model(src, "onnx", "int4", tmp / "s-int4").path,
        "gguf": export_model(src, "gguf", "q4_0", tmp / "s-q4_0.gguf").path,
    }


# -- flags: parsed, refused in one line (exit 2) before any work ------------------------------------
def test_kv_cache_metavar_lists_every_cache_type():
    from qwen2_edge.commands.common import KV_CACHE_METAVAR

    assert "{" + ",".join(KV_CACHE_TYPES) + "}" == KV_CACHE_METAVAR


@pytest.mark.parametrize(
    "command,argv,needle",
    [
        ("run", ["{model}", "--prompt", "x", "--kv-cache", "f8"], "--kv-cache: unknown KV-cache type 'f8'"),
        ("run", ["{model}", "--prompt", "x", "--ctx", "0"], "--ctx: expected a positive integer, got '0'"),
        ("run", ["{model}", "--prompt", "x", "--ctx", "4k"], "--ctx: expected a positive integer"),
        ("bench", ["{model}", "--kv-cache", "int8"], "--kv-cache: unknown KV-cache type 'int8'"),
        ("bench", ["{model}", "--contexts", "0,64"], "--contexts: expected positive integers"),
        ("bench", ["{model}", "--contexts", "64,x"], "--contexts: expected positive integers"),
        ("bench", ["{model}", "--contexts", "64,,128"], "--contexts: expected positive integers"),
        ("bench", ["{model}", "--contexts", ""], "--contexts: expected positive integers"),
        ("bench", ["{model}", "--contexts", "-64"], "--contexts: expected positive integers"),
        # the model's limit (4096 positions) counts the decoded tokens too
        ("bench", ["{model}", "--contexts", "64,4096"], "exceeds the model's 4096 positions"),
        ("check", ["{model}", "{model}", "--kv-cache", "q5_0"], "--kv-cache: unknown KV-cache type 'q5_0'"),
        ("pipeline", ["--model", "{model}", "--out", "{tmp}/p", "--kv-cache", "bf16"],
         "--kv-cache: unknown KV-cache type 'bf16'"),
        # the float reference (transformers) holds only f32
        ("run", ["{model}", "--prompt", "x", "--kv-cache", "f16"], "transformers cannot hold a f16 KV cache"),
        ("bench", ["{model}", "--kv-cache", "q8_0"], "transformers cannot hold a q8_0 KV cache"),
        ("check", ["{model}", "{model}", "--kv-cache", "q4_0"], "transformers cannot hold a q4_0 KV cache"),
    ],
)  # fmt: skip
def test_bad_flags_exit_2_with_one_line_before_any_work(command, argv, needle, fixture_dir, tmp_path, capsys):
    model = fixture_dir("dense")
    capsys.readouterr()
    args = [a.format(model=model, tmp=tmp_path) for a in argv]
    assert main([command, *args]) == 2
    line = _one_line_error(capsys, command)
    assert needle in line
    # Nothing was measured or written: bench refuses before measuring the bandwidth, pipeline before
    # creating its folder.
    assert not (tmp_path / "p").exists()


def test_artifact_whose_runtime_lacks_the_type_is_refused(sliding_exports, tmp_path, capsys):
    """Guards the refusal path for ONNX / GGUF artifacts: every cache type a runtime's table lacks is one
    line naming the artifact, exit 2, from every command (nothing to refuse once a runtime has them all)."""
    refused = 0
    for fmt, cls in (("onnx", OnnxSession), ("gguf", LlamaCppSession)):
        art = str(sliding_exports[fmt])
        for kv in (t for t in KV_CACHE_TYPES if t not in cls.kv_cache_types):
            refused += 1
            for command, argv in (
                ("run", [art, "--prompt", "x"]),
                ("bench", [art]),
                ("check", [str(sliding_exports["src"]), art]),
            ):
                capsys.readouterr()
                assert main([command, *argv, "--kv-cache", kv]) == 2
                line = _one_line_error(capsys, command)
                assert art in line and f"cannot hold a {kv} KV cache" in line
            capsys.readouterr()
            out = tmp_path / f"p-{fmt}-{kv}"
            argv = ["pipeline", "--model", str(sliding_exports["src"]), "--out", str(out), "--formats", fmt]
            assert main([*argv, "--kv-cache", kv]) == 2
            assert f"--kv-cache {kv}: {cls.runtime}" in _one_line_error(capsys, "pipeline")
            assert not out.exists()
    assert refused == sum(len(KV_CACHE_TYPES) - len(c.kv_cache_types) for c in (OnnxSession, LlamaCppSession))


def test_cache_type_an_artifact_cannot_hold_is_one_line_from_every_command(sliding_exports, capsys):
    """A refusal that only the loaded artifact knows (onnxruntime's 4-bit cache on sliding layers needs a
    head size that is a multiple of 32; this fixture's is 16) is still one line and exit 2, also from
    bench's measuring child."""
    art = str(sliding_exports["onnx"])
    for command, argv in (
        ("run", [art, "--prompt", "x"]),
        ("bench", [art, "--repeat", "1", "--prompt-tokens", "8", "--gen-tokens", "2"]),
        ("check", [str(sliding_exports["src"]), art, *FAST_CHECK]),
    ):
        capsys.readouterr()
        assert main([command, *argv, "--kv-cache", "q4_0"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        # bench finds out in its child, after its progress lines (bandwidth, "measuring ..."): the error
        # is still its last line, and one line
        errors = [ln for ln in err if "error:" in ln]
        assert len(errors) == 1 and err[-1] == errors[0] and (command == "bench" or len(err) == 1)
        assert errors[0].startswith(f"qwen2-edge {command}: error: {art}")
        assert "4-bit KV cache on sliding layers needs a head size" in errors[0]


# -- run --------------------------------------------------------------------------------------------
def test_run_gguf_with_f32_cache_gives_the_checkpoints_greedy_tokens(fixture_dir, tmp_path, capsys):
    from qwen2_edge.exporters.api import export_model
    from qwen2_edge.runtimes.options import RuntimeOptions
    from qwen2_edge.runtimes.reference import ReferenceSession
    from qwen2_edge.runtimes.registry import open_session

    src = fixture_dir("dense_untied")
    gguf = export_model(src, fmt="gguf", quant="f32", out=tmp_path / "du.gguf").path
    with open_session(gguf, options=RuntimeOptions(kv_cache="f32", n_ctx=64)) as s:
        assert s.kv_cache == "f32"
        ids = s.encode(PROMPT)
        got = s.greedy(ids, 24)
    with open_session(gguf) as s:  # no request: the runtime's own default
        assert s.kv_cache == LlamaCppSession.default_kv_cache
    assert got == ReferenceSession(src).greedy(ids, 24)
    # The CLI path: the same text as the checkpoint in transformers.
    texts = []
    for model, extra in ((src, []), (gguf, ["--kv-cache", "f32", "--ctx", "64"])):
        capsys.readouterr()
        assert main(["run", str(model), "--prompt", PROMPT, "--max-new-tokens", "24", *extra]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] and len(texts[0]) > 10
    # --ctx reaches the runtime: a session of 16 positions refuses 24 tokens of generation.
    capsys.readouterr()
    assert main(["run", str(gguf), "--prompt", PROMPT, "--max-new-tokens", "24", "--ctx", "16"]) == 2
    assert "exceeds the context of 16" in _one_line_error(capsys, "run")


# -- check: the gated f32-cache row and the deployed row -------------------------------------------
def test_check_reports_the_f32_row_and_the_deployed_row(fixture_dir, tmp_path, capsys):
    from qwen2_edge.exporters.api import export_model

    src = fixture_dir("dense_untied")  # untied: soft output distributions, so KLD is informative
    gguf = export_model(src, fmt="gguf", quant="f32", out=tmp_path / "du.gguf").path
    onnx = export_model(src, fmt="onnx", quant="f32", out=tmp_path / "du-onnx").path
    out = tmp_path / "c.json"
    capsys.readouterr()
    assert main(["check", str(src), str(gguf), str(onnx), *FAST_CHECK, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    doc = json.loads(out.read_text())
    for a, cls in zip(doc["artifacts"], (LlamaCppSession, OnnxSession), strict=True):
        assert a["kv_cache"] == "f32" and a["passed"]  # the gated row: the weights alone
        d = a["deployed"]
        assert d["kv_cache"] == cls.default_kv_cache
        # An f32 deployed cache is the gated row itself; another one is measured by decoding.
        assert d["measured"] == (cls.default_kv_cache != "f32")
        assert d["tokens"] == a["tokens"] and 0 <= d["top1_agreement"] <= 1 and d["kld_mean"] >= 0
        assert f"at deployed KV cache ({cls.default_kv_cache})" in printed
        if not d["measured"]:
            assert d["kld_mean"] == a["kld_mean"] and d["greedy_match"] == a["greedy_match"]
    assert printed.count("KV cache f32]") == 2


def test_deployed_row_decodes_token_by_token_and_matches_prefill_at_f32(fixture_dir, tmp_path):
    """The deployed row's own path (one decode step per scored token), forced at f32 where it must agree
    with the prefill row: an f32 GGUF and ONNX export within float rounding of transformers either way."""
    from qwen2_edge.exporters.api import export_model
    from qwen2_edge.validation.compare import CheckOptions, check_artifacts

    src = fixture_dir("dense_untied")
    arts = [
        export_model(src, fmt="gguf", quant="f32", out=tmp_path / "du.gguf").path,
        export_model(src, fmt="onnx", quant="int8", out=tmp_path / "du-int8").path,
    ]
    opts = CheckOptions(
        ctx=48, chunks=2, greedy_prompts=2, greedy_new_tokens=6, progress=False, kv_cache="f32", deployed=True
    )
    res = check_artifacts(src, arts, opts)
    for a in res.artifacts:
        d = a.deployed
        assert d.measured and d.kv_cache == "f32" and d.over_limits == []
        assert d.summary["tokens"] == a.summary["tokens"] == 2 * (48 - 1 - 24)
        assert d.greedy_first_diff == a.greedy_first_diff
        # decode vs prefill of the same weights: kernel rounding only (measured: f32 GGUF KLD 1e-13 vs
        # 1e-13; int8 ONNX 6.4e-5 vs 6.4e-5, equal to 1e-7 relative)
        assert d.summary["kld_mean"] == pytest.approx(a.summary["kld_mean"], rel=1e-2, abs=1e-9)
        assert d.summary["top1_agreement"] == a.summary["top1_agreement"]
    f32, int8 = res.artifacts
    assert f32.deployed.summary["max_dlogit"] < 1e-4  # measured 1.9e-5
    assert 0 < int8.deployed.summary["kld_mean"] < 1e-3


def test_deployed_row_at_quantized_onnx_caches_orders_by_precision(fixture_dir, tmp_path):
    """onnxruntime holds f16 / q8_0 / q4_0 caches: the deployed row measures each (more error as the cache
    gets coarser) while the gated row, with its f32 cache, stays the weights' own number."""
    from qwen2_edge.exporters.api import export_model
    from qwen2_edge.runtimes.reference import ReferenceSession
    from qwen2_edge.validation.compare import CheckOptions, check_artifacts

    src = fixture_dir("dense_untied")
    onnx = export_model(src, fmt="onnx", quant="f32", out=tmp_path / "du-onnx").path
    ref = ReferenceSession(src)
    gated, deployed = set(), []
    for kv in ("f16", "q8_0", "q4_0"):
        opts = CheckOptions(ctx=48, chunks=1, greedy_prompts=1, greedy_new_tokens=6, progress=False, kv_cache=kv)
        (a,) = check_artifacts(ref, [onnx], opts).artifacts
        assert a.kv_cache == "f32" and a.passed and a.deployed.measured and a.deployed.kv_cache == kv
        gated.add(a.summary["kld_mean"])
        deployed.append(a.deployed.summary["kld_mean"])
    # measured: gated 9.8e-15 each time; deployed f16 4.2e-10, q8_0 1.5e-6, q4_0 4.5e-5
    assert len(gated) == 1 and max(gated) < 1e-12
    assert max(gated) < deployed[0] < deployed[1] < deployed[2] < 1e-3
    assert deployed[1] > 1e2 * deployed[0] and deployed[2] > 10 * deployed[1]


def test_onnx_folder_exported_with_its_own_cache_is_checked_at_that_cache(fixture_dir, tmp_path, capsys):
    """An ONNX graph built with a q8_0 cache (export --kv-cache q8_0) cannot run f32: check gates its one
    row at q8_0 and says so, instead of refusing the folder."""
    from qwen2_edge.exporters.api import export_model

    src = fixture_dir("dense_untied")
    baked = export_model(src, fmt="onnx", quant="f32", out=tmp_path / "du-q8", kv_cache="q8_0").path
    out = tmp_path / "c.json"
    capsys.readouterr()
    assert main(["check", str(src), str(baked), *FAST_CHECK, "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    (a,) = doc["artifacts"]
    assert a["kv_cache"] == "q8_0" and a["passed"] and 0 < a["kld_mean"] < 1e-3
    assert a["deployed"]["kv_cache"] == "q8_0" and not a["deployed"]["measured"]
    assert any("its gated row is at its own q8_0 KV cache" in n for n in doc["notes"])


# -- bench --contexts -------------------------------------------------------------------------------
def _expected_kv_bytes(fmt: str, kv: str, context: int) -> int:
    """The sliding fixture's cache with `context` tokens: layer 0 keeps all of them, layers 1 and 2 their
    last 8 (onnxruntime's windowed buffer: 8 + 16 rows, all scanned); K and V of 1 KV head x 16 dims each
    (config.json: hidden 64 / 4 heads, max_window_layers 1)."""
    channels = 2 * 1 * 16
    positions = context + 2 * min(context, 8 + 16 if fmt == "onnx" else 8)
    if fmt == "onnx" and kv in ONNX_QUANT:
        return int(channels * positions * ONNX_QUANT[kv] + 3 * channels * 4)
    return int(channels * positions * ELEMENT[kv])


def test_bench_contexts_rows_per_artifact_and_context(sliding_exports, tmp_path, capsys):
    """--contexts and the window sweep (w, 4w, 8w = 8, 32, 64) in one run: a row per artifact and context."""
    out, png = tmp_path / "b.json", tmp_path / "b.png"
    arts = [str(sliding_exports["onnx"]), str(sliding_exports["gguf"])]
    capsys.readouterr()
    rc = main(["bench", *arts, "--contexts", "64,32,64", "--window-sweep", "--prompt-tokens", "12",
               "--gen-tokens", "4", "--repeat", "2", "--kv-cache", "f32",
               "--json", str(out), "--plot", str(png)])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "ms/token" in printed and "KV MB" in printed
    doc = json.loads(out.read_text())
    assert doc["options"]["contexts"] == [32, 64] and doc["options"]["kv_cache"] == "f32"
    for row, fmt in zip(doc["results"], ("onnx", "gguf"), strict=True):
        assert row["format"] == fmt and row["kv_cache"] == "f32"
        rows = row["contexts"]
        assert [c["context"] for c in rows] == [8, 32, 64]
        assert sorted(int(c) for c in row["window_decode_tok_s"]) == [8, 32, 64]
        for c in rows:
            assert c["kv_cache"] == "f32"
            assert c["n_ctx"] >= c["context"] + 2 * 16  # sized for the context and both decode rounds
            for key in ("prefill_tok_s", "decode_tok_s", "ms_per_token", "roofline_fraction"):
                assert c[key] > 0, (fmt, key)
            assert c["ms_per_token"] == pytest.approx(1000 / c["decode_tok_s"], rel=1e-4)
            assert c["decode_tok_s_min"] <= c["decode_tok_s"] <= c["decode_tok_s_max"]
            assert c["peak_rss_mb"] > c["baseline_rss_mb"] > 0
            # the byte model, against the formula written out above
            assert c["kv_bytes_computed"] == _expected_kv_bytes(fmt, "f32", c["context"])
            if c["kv_bytes_source"] == "computed":
                assert c["kv_bytes"] == c["kv_bytes_computed"]
            else:
                assert c["kv_bytes_source"] == "measured" and c["kv_bytes"] > 0
            assert c["bytes_per_token"] == row["weight_bytes_per_token"] + c["kv_bytes_per_token"]
        w, w4, w8 = rows
        # Beyond the window (onnxruntime: its 24-row buffer) only the full-attention layer grows: 32
        # positions x 32 channels x 4 bytes; up to it all three do.
        assert w8["kv_bytes_computed"] - w4["kv_bytes_computed"] == 32 * 32 * 4
        grown = 24 + 2 * (24 - 8) if fmt == "onnx" else 24
        assert w4["kv_bytes_computed"] - w["kv_bytes_computed"] == grown * 32 * 4
        assert w8["kv_bytes"] >= w4["kv_bytes"] >= w["kv_bytes"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_byte_model_counts_kv_at_each_cache_types_element_size(sliding_exports):
    """Guards the cache-type table: element sizes, ONNX's per-channel scales, window caps on sliding layers."""
    from qwen2_edge.bench.bytes_per_token import inventory, kv_bytes_per_token, kv_cache_bytes, with_kv_cache

    for fmt in ("onnx", "gguf"):
        geom = inventory(sliding_exports[fmt], fmt).geometry
        assert geom.windows == (None, 8, 8) and geom.kv_heads == (1, 1, 1) and geom.head_dim == 16
        for kv in KV_CACHE_TYPES:
            g = with_kv_cache(geom, fmt, kv)
            assert g.kv_cache == kv
            for ctx in (1, 8, 64, 16384):
                assert kv_cache_bytes(g, ctx) == _expected_kv_bytes(fmt, kv, ctx), (fmt, kv, ctx)
                assert kv_bytes_per_token(g, ctx) == kv_cache_bytes(g, ctx)
    q8 = with_kv_cache(inventory(sliding_exports["gguf"], "gguf").geometry, "gguf", "q8_0")
    assert kv_cache_bytes(q8, 16384) == int(32 * (16384 + 16) * 34 / 32)  # 557,600


def test_window_sweep_is_contexts_w_4w_8w(sliding_exports):
    """--window-sweep rides on the contexts mechanism: w, 4w, 8w; with --contexts only when asked."""
    from qwen2_edge.bench.measure import BenchOptions
    from qwen2_edge.bench.run import prepare_artifacts

    art = [sliding_exports["gguf"]]
    (p,) = prepare_artifacts(art, BenchOptions())
    assert p.contexts == p.sweep == (8, 32, 64)
    (p,) = prepare_artifacts(art, BenchOptions(contexts=(100,)))
    assert p.contexts == (100,) and p.sweep == ()
    (p,) = prepare_artifacts(art, BenchOptions(contexts=(100,), window_sweep=True))
    assert p.contexts == (8, 32, 64, 100) and p.sweep == (8, 32, 64)
    (p,) = prepare_artifacts(art, BenchOptions(window_sweep=False))
    assert p.contexts == ()
    (p,) = prepare_artifacts(art, BenchOptions(), kv_caches=["f32"])
    assert p.target.kv_cache == "f32"
    (p,) = prepare_artifacts(art, BenchOptions())
    assert p.target.kv_cache is None  # the session picks its default (an ONNX graph's depends on the graph)


# -- pipeline ---------------------------------------------------------------------------------------
def test_pipeline_records_the_kv_setting(fixture_dir, tmp_path):
    from qwen2_edge.pipeline.config import PipelineConfig
    from qwen2_edge.pipeline.report import text_table
    from qwen2_edge.pipeline.run import run_pipeline

    out = tmp_path / "run"
    cfg = PipelineConfig(out=out, model=str(fixture_dir("dense_untied")), formats=("gguf",), quants=("int8",),
                         check_ctx=48, check_chunks=2, bench=False, kv_cache="f32")  # fmt: skip
    res = run_pipeline(cfg, echo=lambda m: None)
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["kv_cache"] == "f32"
    (row,) = report["summary"]
    assert row["kv_cache"] == "f32" and row["kld_at_kv"] == row["kld_mean"] and row["passed"]
    assert "kld_at_kv" in (out / "summary.md").read_text() and "kv_cache" in text_table(report["summary"])
    assert res.check["artifacts"][0]["deployed"]["kv_cache"] == "f32"
    # Another KV setting is another check (the stage cache keys on it), not a cached answer.
    cfg.kv_cache = None
    again = run_pipeline(cfg, echo=lambda m: None)
    by_stage = {s["stage"].split(" ")[0]: s["cached"] for s in again.stages}
    assert by_stage["quantize"] is True and by_stage["check"] is False
    (row,) = json.loads((out / "report.json").read_text())["summary"]
    assert row["kv_cache"] == LlamaCppSession.default_kv_cache
