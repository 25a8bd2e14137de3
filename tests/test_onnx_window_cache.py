"""Window-sized KV caches in ONNX (GroupQueryAttention sliding_window_cache) and the session's shared buffers.

Measured on the fixtures (window 8, 2-vCPU AVX-512): f32 max |dlogit| vs transformers over 96 tokens
(12x the window) <= 2.5e-5 in prefill, token-by-token decode and mixed chunks; asserted at 1e-4 (the issue's
bound). A sliding layer's buffer stays at window + 16 rows whatever the context.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from qwen2_edge.errors import UserError
from qwen2_edge.exporters.onnx import export_onnx
from qwen2_edge.exporters.onnx.kv_cache import WINDOW_CACHE_SLACK, cache_layout
from qwen2_edge.model.checkpoint import open_checkpoint
from qwen2_edge.runtimes.onnxruntime import MIN_CAPACITY, OnnxSession

WINDOWED = ["sliding", "moe_sliding"]
N = 96  # 12x the fixtures' window of 8
IDS = [int(t) for t in np.random.default_rng(1).integers(0, 320, size=N)]


@pytest.fixture(scope="module")
def f32_folder(fixture_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx-window")
    made = {}

    def get(name: str):
        if name not in made:
            made[name] = export_onnx(open_checkpoint(fixture_dir(name)), root / name, "f32").path
        return made[name]

    return get


def _reference(hf_model, path, ids) -> np.ndarray:
    with torch.inference_mode():
        return hf_model(path)(torch.tensor([ids])).logits[0].numpy()


def _in_chunks(session: OnnxSession, ids: list[int], sizes: list[int]) -> np.ndarray:
    session.reset()
    out, start = [], 0
    for size in sizes:
        out.append(session.append(ids[start : start + size]))
        start += size
    out += [session.append([t]) for t in ids[start:]]
    assert session.n_cached == len(ids)
    return np.concatenate(out)


@pytest.mark.parametrize("name", WINDOWED)
def test_windowed_cache_matches_transformers_far_past_the_window(name, f32_folder, fixture_dir, hf_model):
    expected = _reference(hf_model, fixture_dir(name), IDS)
    session = OnnxSession(f32_folder(name))
    # one prefill longer than the buffer; token by token; chunks that straddle the window and the buffer
    for sizes in ([N], [3], [30, 1, 9, 25]):
        got = _in_chunks(session, IDS, sizes)
        assert np.abs(got - expected).max() <= 1e-4, sizes


@pytest.mark.parametrize("name", WINDOWED)
def test_sliding_layers_hold_window_sized_buffers(name, f32_folder):
    folder = f32_folder(name)
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    layout = cache_layout(graph)
    spec = OnnxSession(folder).spec
    assert [c.window for c in layout] == list(spec.windows)
    assert all(c.windowed == (c.window is not None) for c in layout)
    session = OnnxSession(folder)
    row_bytes = 2 * spec.num_kv_heads * spec.head_dim * 4  # key + value, float32
    sizes = []
    for n in (8, 64, 200):  # 1x, 8x, 25x the window
        session.reset()
        session.append(IDS * 3 if n > N else IDS[:n])
        session.append([1])
        rows = session.kv_cache_rows()
        for c in layout:
            if c.windowed:
                assert rows[c.index] == c.window + WINDOW_CACHE_SLACK
            else:
                assert rows[c.index] >= session.n_cached
        sizes.append({c.index: rows[c.index] * row_bytes for c in layout if c.windowed})
    assert sizes[0] == sizes[1] == sizes[2]  # constant beyond the window
    assert session.kv_cache_bytes() == sum(rows.values()) * row_bytes


def test_full_layer_buffers_grow_and_keep_their_contents(f32_folder, fixture_dir, hf_model):
    """Guards the doubling copy: a sequence that outgrows the first allocation decodes as transformers."""
    ids = (IDS * 4)[: MIN_CAPACITY + 60]
    expected = _reference(hf_model, fixture_dir("sliding"), ids)
    session = OnnxSession(f32_folder("sliding"))
    got = _in_chunks(session, ids, [10])  # first buffer MIN_CAPACITY rows, then token by token past it
    assert np.abs(got - expected).max() <= 1e-4
    full = [c.index for c in session.layout if not c.windowed]
    assert all(session.kv_cache_rows()[i] == 2 * (MIN_CAPACITY + 1) for i in full)  # grew once, by doubling


def test_fixed_context_is_allocated_once_and_enforced(f32_folder):
    session = OnnxSession(f32_folder("sliding"), n_ctx=50)
    session.append(IDS[:49])
    full = [c.index for c in session.layout if not c.windowed]
    assert all(session.kv_cache_rows()[i] == 50 for i in full)
    session.append([3])
    with pytest.raises(UserError, match="exceeds the session's context of 50 tokens"):
        session.append([4])


@pytest.mark.parametrize("name", WINDOWED)
def test_genai_and_our_session_agree_past_eight_windows(name, f32_folder):
    """onnxruntime-genai sizes the sliding layers from genai_config's sliding_window section (window +
    cache_slack rows) and must produce our greedy tokens with a prompt of 9 windows and 16 new tokens."""
    og = pytest.importorskip("onnxruntime_genai")
    folder = f32_folder(name)
    section = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]["sliding_window"]
    spec = OnnxSession(folder).spec
    assert section["layers"] == [i for i, w in enumerate(spec.windows) if w is not None]
    assert section["window_size"] == spec.max_window and section["cache_slack"] == WINDOW_CACHE_SLACK
    prompt = IDS[:72]
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + 16, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(prompt)
    tokens = []
    while not gen.is_done():
        gen.generate_next_token()
        tokens.append(int(gen.get_next_tokens()[0]))
    assert len(tokens) == 16
    assert tokens == OnnxSession(folder).greedy(prompt, 16)
