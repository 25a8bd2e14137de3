"""Benchmarking: per-artifact timings in fresh processes, memory bandwidth, bytes per token, roofline.

`bench_artifacts(paths, BenchOptions(...)) -> list[BenchResult]` is the library entry point (the `bench`
command and benchmarks/run_all.py call it). Modules import lazily so the measuring child stays small.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .measure import BenchOptions
    from .result import BenchResult
    from .run import bench_artifacts

__all__ = ["BenchOptions", "BenchResult", "bench_artifacts"]


def __getattr__(name: str):
    if name == "bench_artifacts":
        from .run import bench_artifacts

        return bench_artifacts
    if name == "BenchOptions":
        from .measure import BenchOptions

        return BenchOptions
    if name == "BenchResult":
        from .result import BenchResult

        return BenchResult
    raise AttributeError(name)
