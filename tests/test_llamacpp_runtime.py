"""The llama.cpp runtime's deployment settings: KV-cache precision, window-sized sliding caches, context.

Measured on the fixtures below (2-vCPU AMD EPYC, llama-cpp-python 0.3.36), max |dlogit| (logits' std ~8.4):
- f32 cache (flash attention off) vs transformers: 1.9e-5 over 96 tokens, 2.3e-5 over 300 tokens with a
  window of 8, prefill and token-by-token decode alike -> bound F32_TOL = 1e-3 (test_gguf_export.py).
- against the f32 cache, prefill / decode: f16 (flash attention on) 2.8e-3 / 7.0e-3 (its decode kernel
  accumulates in f16); q8_0 6.6e-2 / 6.6e-2; q4_0 1.10 / 1.10; top-1 100% for all. Decode against the same
  cache's own prefill: f16 6.5e-3, q8_0 1.5e-5, q4_0 1.1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest

from qwen2_edge.errors import UnsupportedError

from .test_gguf_export import F32_TOL

WINDOW = 8
# The `sliding` fixture's layout (layer 0 full, layers 1-2 slide by 8) with 2 heads of 32 instead of 4 of
# 16: q8_0 / q4_0 caches store head rows in blocks of 32, so the usual fixtures cannot hold them.
WIDE_HEADS = dict(
    layers=3,
    heads=2,
    kv_heads=1,
    seed=2,
    config={"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1},
)
# (lower, upper) bound of max |dlogit| against the f32 cache over 96 tokens: the lower bound proves the
# cache type took effect, the upper one that it still computes the model (measured values in the docstring).
BANDS = {"f16": (5e-4, 2e-2), "q8_0": (1e-2, 0.2), "q4_0": (0.2, 3.0)}
# decode vs the same cache's prefill (measured: f16 6.5e-3, q8_0 1.5e-5, q4_0 1.1e-5)
SELF_TOL = {"f16": 2e-2, "q8_0": 1e-3, "q4_0": 1e-3}


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """(checkpoint, f32 GGUF, transformers session) of the wide-head windowed fixture."""
    from qwen2_edge.exporters.api import export_model
    from qwen2_edge.runtimes.reference import ReferenceSession
    from qwen2_edge.testing import make_checkpoint
    from qwen2_edge.testing.fixtures import FixtureSpec

    root = tmp_path_factory.mktemp("wide")
    ckpt = make_checkpoint(FixtureSpec(**WIDE_HEADS), root / "wide")
    gguf = export_model(ckpt, fmt="gguf", quant="f32", out=root / "wide.gguf").path
    return ckpt, gguf, ReferenceSession(ckpt)


def _heldout(ref, n: int) -> list[int]:
    from qwen2_edge.data.corpus import heldout_text

    ids = ref.encode(heldout_text())[:n]
    assert len(ids) == n
    return ids


def _decode(session, ids: list[int], start: int) -> np.ndarray:
    """Logits of every position: `start` tokens in one call, then one token per call through the cache."""
    session.reset()
    return np.concatenate([session.append(ids[:start])] + [session.append([t]) for t in ids[start:]])


def test_f32_cache_matches_transformers_far_past_the_window(wide):
    """300 tokens = 37x the window, longer than the sliding layers' ring (256 cells) and than one compute
    step (n_ubatch 248): a prompt wraps the ring inside one prefill, decode wraps it token by token.
    Guards swa_full=False: a ring cell overwritten too early, or a window applied off by one, shows up
    here as an error of the size of the logits."""
    from qwen2_edge.runtimes.llamacpp import LlamaCppSession

    _, gguf, ref = wide
    ids = _heldout(ref, 300)
    want = ref.logits(ids)
    with LlamaCppSession(gguf, threads=2, kv_cache="f32") as s:
        usage = s.kv_cache_usage()
        assert s.n_ubatch == 248 and usage["sliding"].cells == 256  # the ring, not the context (4096)
        assert usage["full"].cells == 4096 and s.n_ctx == 4096
        prefill = s.logits(ids)
        decode = _decode(s, ids, 10)
    assert np.abs(prefill - want).max() <= F32_TOL  # measured 2.3e-5
    assert np.abs(decode - want).max() <= F32_TOL  # measured 2.3e-5


@pytest.mark.parametrize("kv", list(BANDS))
def test_deployed_caches_differ_from_f32_by_their_measured_amount(kv, wide):
    from qwen2_edge.runtimes.llamacpp import LlamaCppSession

    _, gguf, ref = wide
    ids = _heldout(ref, 96)  # 12x the window
    with LlamaCppSession(gguf, threads=2, kv_cache="f32") as s:
        base = s.logits(ids)
    with LlamaCppSession(gguf, threads=2, kv_cache=kv) as s:
        assert s.kv_cache == kv
        prefill = s.logits(ids)
        decode = _decode(s, ids, 4)
    lo, hi = BANDS[kv]
    err = np.abs(prefill - base).max()
    print(f"{kv} cache vs f32: prefill {err:.2e}, decode {np.abs(decode - base).max():.2e}")
    assert lo < err < hi
    assert lo < np.abs(decode - base).max() < hi
    assert np.abs(decode - prefill).max() < SELF_TOL[kv]
    assert (prefill.argmax(1) == base.argmax(1)).all()


def test_kv_bytes_of_a_windowed_layer_stop_growing_at_the_window(wide):
    """What the sequence holds, counted by llama.cpp's state serializer: the sliding layers' share is flat
    from the window on, the full-attention layer's grows one row per token. The buffers (kv_cache_bytes)
    are allocated at creation: n_ctx cells for the full layer, the 256-cell ring for each sliding one."""
    from qwen2_edge.runtimes.llamacpp import LlamaCppSession

    _, gguf, ref = wide
    ids = _heldout(ref, 8 * WINDOW)
    row = 2 * 32 * 2  # one cell of one layer: K and V, 1 KV head of 32, f16
    usage = {}
    with LlamaCppSession(gguf, threads=2, kv_cache="f16", n_ctx=1024) as s:
        allocated = s.kv_cache_bytes()
        assert abs(allocated - row * (1024 + 2 * 256)) <= 2 * 0.005 * 2**20  # llama.cpp reports 0.01 MiB
        for n in (WINDOW // 2, WINDOW, 2 * WINDOW, 8 * WINDOW):
            s.append(ids[s.n_cached : n])
            usage[n] = s.kv_cache_usage()
            assert s.kv_cache_bytes() == allocated
    assert [usage[n]["sliding"].held_bytes for n in usage] == [2 * row * WINDOW // 2] + [2 * row * WINDOW] * 3
    assert [usage[n]["full"].held_bytes for n in usage] == [row * n for n in usage]
    u = usage[WINDOW]
    assert (u["full"].layers, u["full"].cells, u["sliding"].layers, u["sliding"].cells) == (1, 1024, 2, 256)


def test_defaults_are_what_llama_cpp_deploys(fixture_dir, tmp_path):
    from qwen2_edge.exporters.api import export_model
    from qwen2_edge.runtimes import open_session
    from qwen2_edge.runtimes.options import RuntimeOptions

    gguf = export_model(fixture_dir("dense"), fmt="gguf", quant="f32", out=tmp_path / "d.gguf").path
    with open_session(gguf) as s:
        # the fixture's context_length, not a cap; a model without windows keeps the full compute step
        assert (s.kv_cache, s.n_ctx, s.n_ubatch, s.kv_bytes_per_element) == ("f16", 4096, 512, 2.0)
        assert s.kv_cache_usage()["full"].cells == 4096 and "sliding" not in s.kv_cache_usage()
    with open_session(gguf, options=RuntimeOptions(kv_cache="f32", n_ctx=100)) as s:
        assert (s.kv_cache, s.n_ctx, s.kv_bytes_per_element) == ("f32", 100, 4.0)


def test_context_beyond_n_ctx_and_impossible_caches_are_one_line_errors(fixture_dir, tmp_path):
    from qwen2_edge.exporters.api import export_model
    from qwen2_edge.runtimes.llamacpp import LlamaCppSession

    gguf = export_model(fixture_dir("dense"), fmt="gguf", quant="f32", out=tmp_path / "d.gguf").path
    with LlamaCppSession(gguf, n_ctx=32, kv_cache="f32") as s:
        s.append(list(range(30)))
        with pytest.raises(ValueError, match="sequence of 33 tokens exceeds the context of 32") as e:
            s.append([1, 2, 3])
        assert "\n" not in str(e.value)
        assert s.n_cached == 30  # nothing was fed
    with pytest.raises(UnsupportedError, match="context 5000 exceeds the model's context_length 4096"):
        LlamaCppSession(gguf, n_ctx=5000)
    # the dense fixture's heads are 16 wide: q8_0 / q4_0 rows come in blocks of 32
    with pytest.raises(
        UnsupportedError, match=r"head size 16 is not a multiple of q8_0's block of 32 \(choose f32, f16\)"
    ):
        LlamaCppSession(gguf, kv_cache="q8_0")
    with pytest.raises(UnsupportedError, match="cannot hold a bf16 KV cache"):
        LlamaCppSession(gguf, kv_cache="bf16")


def test_ubatch_keeps_the_sliding_ring_at_its_smallest():
    from qwen2_edge.runtimes.llamacpp import ubatch_for_window

    # ring = pad256(window + n_ubatch): 256 cells for windows of 8 / 64 / 128, 768 for 512
    assert [ubatch_for_window(w, 32768) for w in (8, 64, 128, 512, 4096)] == [248, 192, 128, 256, 256]
    assert ubatch_for_window(None, 32768) == ubatch_for_window(128, 150) == 512  # no window / no room
