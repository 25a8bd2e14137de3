"""The reference runtime is transformers itself: its logits equal transformers' own forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qwen2_edge.runtimes import open_session

from .conftest import ALL_FIXTURES


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_reference_logits_equal_transformers(name, fixture_dir, hf_model):
    path = fixture_dir(name)
    ids = list(np.random.default_rng(0).integers(0, 320, size=40))
    with torch.inference_mode():
        expected = hf_model(path)(torch.tensor([ids])).logits[0].numpy()
    session = open_session(path)
    got = session.logits(ids)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    # incremental decode through the KV cache reproduces the prefill
    session.reset()
    inc = np.concatenate([session.append(ids[:10])] + [session.append([t]) for t in ids[10:]])
    np.testing.assert_allclose(inc, expected, rtol=0, atol=1e-3)


def test_greedy_generate_matches_transformers_generate(fixture_dir, hf_model):
    path = fixture_dir("moe_sliding")
    prompt = [5, 17, 42, 99, 3]
    with torch.inference_mode():
        out = hf_model(path).generate(
            torch.tensor([prompt]), max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0
        )
    expected = out[0, len(prompt) :].tolist()
    assert open_session(path).greedy(prompt, 16) == expected
