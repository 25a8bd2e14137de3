"""Shared fixtures: tiny random checkpoints written once per test session (no network)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

from qwen2_edge.testing import FIXTURES, make_checkpoint

# Property tests draw the same examples on every run (CI must not go red at random, and no example database
# is kept between runs); `HYPOTHESIS_PROFILE=fuzz` searches widely with a fresh seed that Hypothesis prints.
settings.register_profile("default", derandomize=True, database=None, print_blob=True, max_examples=60)
settings.register_profile("fuzz", derandomize=False, database=None, print_blob=True, max_examples=20_000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

ALL_FIXTURES = tuple(FIXTURES)

# No test may reach the network: a path that does not exist and looks like a hub id (org/name) is resolved
# from the local Hugging Face cache only (tests/test_hub.py builds one).
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def fixture_dir(tmp_path_factory):
    """fixture_dir(name) -> path of the named tiny checkpoint (made on first use)."""
    root = tmp_path_factory.mktemp("fixtures")
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = make_checkpoint(name, root / name)
        return made[name]

    return get


@pytest.fixture(scope="session")
def hf_model():
    """hf_model(path) -> transformers model loaded independently of our loader (cached)."""
    import torch
    from transformers import AutoModelForCausalLM

    cache = {}

    def get(path: Path):
        if path not in cache:
            cache[path] = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        return cache[path]

    return get
