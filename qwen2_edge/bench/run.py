"""bench_artifacts: measure artifacts side by side in one run, against the bandwidth measured in that run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from .bandwidth import Bandwidth, measure_bandwidth
from .bytes_per_token import bytes_per_token, inventory
from .measure import BenchOptions, measure_in_subprocess
from .result import BenchResult, build_result


def sweep_contexts(window: int | None, opts: BenchOptions) -> list[int]:
    """w, 4w, 8w for a model with sliding windows (when the sweep is on)."""
    if not window or opts.window_sweep is False:
        return []
    return [window, 4 * window, 8 * window]


def bench_artifact(
    path: str | Path,
    opts: BenchOptions,
    bw: Bandwidth,
    label: str = "",
    session_target: str | None = None,
) -> BenchResult:
    """One artifact: timings from a fresh child process, bytes per token from its tensors.

    session_target: measure through this Session class ("module:Class") instead of the registry's."""
    from ..model.builtin import resolve_model_path
    from ..runtimes.registry import detect_format

    p = resolve_model_path(path)
    if session_target:
        import importlib

        module, cls = session_target.split(":")
        fmt = getattr(importlib.import_module(module), cls).format
        runtime_name = getattr(importlib.import_module(module), cls).runtime
    else:
        entry = detect_format(p)  # a one-line error for a path no runtime opens, before any child starts
        fmt, runtime_name = entry.format, entry.runtime
    inv = inventory(p, fmt)
    timing = measure_in_subprocess(p, opts, sweep_contexts(inv.geometry.max_window, opts), session_target)
    if timing.kv_bytes_per_element:  # the runtime knows its cache type better than the file does
        inv.geometry = replace(inv.geometry, kv_bytes_per_element=timing.kv_bytes_per_element)
    # The cache holds prompt + half the generated tokens on average over the decode.
    step = bytes_per_token(inv, opts.prompt_tokens + opts.gen_tokens // 2)
    return build_result(p, label or runtime_name, timing, inv, step, bw, opts)


def bench_artifacts(
    paths: Sequence[str | Path],
    opts: BenchOptions | None = None,
    labels: Sequence[str] | None = None,
    bandwidth: Bandwidth | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[BenchResult]:
    """Measure every artifact (each in its own process) after measuring the memory bandwidth."""
    opts = opts or BenchOptions()
    bw = bandwidth or measure_bandwidth(opts.threads)
    labels = list(labels) if labels else [""] * len(paths)
    out = []
    for path, label in zip(paths, labels, strict=True):
        if progress:
            progress(f"measuring {path} ...")
        out.append(bench_artifact(path, opts, bw, label))
    return out
