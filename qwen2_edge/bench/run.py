"""bench_artifacts: measure artifacts side by side in one run, against the bandwidth measured in that run."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from .bandwidth import Bandwidth, measure_bandwidth
from .bytes_per_token import Inventory, bytes_per_token, inventory
from .measure import BenchOptions, RawTiming, Target, measure_group
from .result import BenchResult, build_result


@dataclass(frozen=True)
class Artifact:
    """What to measure: a path, its label, and optionally another Session class than the registry's."""

    path: str | Path
    label: str = ""
    session: str | None = None  # "module:Class", e.g. onnxruntime-genai over an ONNX folder
    window_sweep: bool | None = None  # None: the options' setting


def sweep_contexts(window: int | None, enabled: bool | None) -> tuple[int, ...]:
    """w, 4w, 8w for a model with sliding windows (unless the sweep is off)."""
    if not window or enabled is False:
        return ()
    return (window, 4 * window, 8 * window)


def _prepare(a: Artifact, opts: BenchOptions) -> tuple[Path, str, Inventory, Target]:
    from ..model.builtin import resolve_model_path
    from ..runtimes.registry import detect_format

    p = resolve_model_path(a.path)
    if a.session:
        module, cls = a.session.split(":")
        session_cls = getattr(importlib.import_module(module), cls)
        fmt, runtime = session_cls.format, session_cls.runtime
    else:
        entry = detect_format(p)  # a one-line error for a path no runtime opens, before any child starts
        fmt, runtime = entry.format, entry.runtime
    inv = inventory(p, fmt)
    sweep = sweep_contexts(
        inv.geometry.max_window, opts.window_sweep if a.window_sweep is None else a.window_sweep
    )
    return p, a.label or runtime, inv, Target(p, sweep, a.session)


def _result(
    p: Path, label: str, inv: Inventory, timing: RawTiming, bw: Bandwidth, opts: BenchOptions
) -> BenchResult:
    if timing.kv_bytes_per_element:  # the runtime knows its cache type better than the file does
        inv.geometry = replace(inv.geometry, kv_bytes_per_element=timing.kv_bytes_per_element)
    # The cache holds prompt + half the generated tokens on average over the decode.
    step = bytes_per_token(inv, opts.prompt_tokens + opts.gen_tokens // 2)
    return build_result(p, label, timing, inv, step, bw, opts)


def bench_group(items: Sequence[Artifact], opts: BenchOptions, bw: Bandwidth) -> list[BenchResult]:
    """Artifacts loaded side by side (each in its own process), timed rounds interleaved among them."""
    prepared = [_prepare(a, opts) for a in items]
    timings = measure_group([t for *_, t in prepared], opts)
    return [
        _result(p, label, inv, tm, bw, opts) for (p, label, inv, _), tm in zip(prepared, timings, strict=True)
    ]


def bench_artifact(
    path: str | Path,
    opts: BenchOptions,
    bw: Bandwidth,
    label: str = "",
    session_target: str | None = None,
) -> BenchResult:
    """One artifact: timings from a fresh child process, bytes per token from its tensors."""
    return bench_group([Artifact(path, label, session_target)], opts, bw)[0]


def bench_artifacts(
    paths: Sequence[str | Path],
    opts: BenchOptions | None = None,
    labels: Sequence[str] | None = None,
    bandwidth: Bandwidth | None = None,
    progress: Callable[[str], None] | None = None,
    interleave: bool = True,
) -> list[BenchResult]:
    """Measure every artifact, each in its own process, after measuring the memory bandwidth.

    interleave=True loads them all at once and alternates their timed rounds (fair under machine noise;
    needs the memory of all of them together); False measures one after another."""
    opts = opts or BenchOptions()
    bw = bandwidth or measure_bandwidth(opts.threads)
    items = [
        Artifact(p, lab) for p, lab in zip(paths, list(labels) if labels else [""] * len(paths), strict=True)
    ]
    if interleave:
        if progress:
            progress(f"measuring {len(items)} artifact(s), rounds interleaved ...")
        return bench_group(items, opts, bw)
    out = []
    for a in items:
        if progress:
            progress(f"measuring {a.path} ...")
        out.extend(bench_group([a], opts, bw))
    return out
