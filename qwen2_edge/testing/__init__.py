"""Tiny random checkpoints for tests and benchmarks (written locally; no network)."""

from .fixtures import FIXTURES, FixtureSpec, make_checkpoint

__all__ = ["FIXTURES", "FixtureSpec", "make_checkpoint"]
