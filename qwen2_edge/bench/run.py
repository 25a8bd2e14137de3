"""bench_artifacts: measure artifacts side by side in one run, against the bandwidth measured in that run."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import UserError
from .bandwidth import Bandwidth, measure_bandwidth
from .bytes_per_token import Inventory, bytes_per_token, inventory, with_kv_cache
from .measure import (
    BenchOptions,
    RawContextTiming,
    RawTiming,
    Target,
    context_n_ctx,
    measure_context,
    measure_group,
)
from .result import BenchResult, build_context_result, build_result


@dataclass(frozen=True)
class Artifact:
    """What to measure: a path, its label, and optionally another Session class than the registry's."""

    path: str | Path
    label: str = ""
    session: str | None = None  # "module:Class", e.g. onnxruntime-genai over an ONNX folder
    window_sweep: bool | None = None  # None: the options' setting
    kv_cache: str | None = None  # None: the options' kv_cache (itself None: the runtime's default)


@dataclass
class Prepared:
    path: Path
    label: str
    format: str
    inv: Inventory
    target: Target
    contexts: tuple[int, ...]  # --contexts and the window sweep's
    sweep: tuple[int, ...]  # the window sweep's contexts (w, 4w, 8w), if it runs


def sweep_contexts(window: int | None, enabled: bool | None) -> tuple[int, ...]:
    """w, 4w, 8w for a model with sliding windows (unless the sweep is off)."""
    if not window or enabled is False:
        return ()
    return (window, 4 * window, 8 * window)


def parse_contexts(text: str) -> tuple[int, ...]:
    """`--contexts 512,4096,16384`: positive integers, comma separated; sorted, duplicates dropped."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if not values or any(v <= 0 for v in values):
        raise UserError(
            f"--contexts: expected positive integers separated by commas (e.g. 512,4096), got {text!r}"
        )
    return tuple(sorted(set(values)))


def _session_class(a: Artifact, p: Path):
    from ..runtimes.registry import detect_format

    if a.session:
        module, cls = a.session.split(":")
        return getattr(importlib.import_module(module), cls)
    return detect_format(p).session_class()  # a one-line error for a path no runtime opens


def _model_limit(p: Path, fmt: str) -> int | None:
    """The most positions the artifact's model takes (max_position_embeddings / GGUF context_length)."""
    if fmt == "gguf":
        from ..runtimes.llamacpp import check_gguf

        return check_gguf(p).get("context_length")
    from ..model.spec import read_spec

    try:
        return read_spec(p / "config.json").max_position_embeddings
    except UserError:  # a foreign folder (another tool's export): the runtime says when it is too long
        return None


def _prepare(a: Artifact, opts: BenchOptions) -> Prepared:
    """Everything the parent knows before any child starts; every refusal is raised here."""
    from ..model.builtin import resolve_model_path
    from ..runtimes.registry import kv_cache_choice

    p = resolve_model_path(a.path)
    session_cls = _session_class(a, p)
    kv = a.kv_cache if a.kv_cache is not None else opts.kv_cache
    kv_cache_choice(session_cls, p, kv)  # refused here; None stays None: the session picks its default
    inv = inventory(p, session_cls.format)
    sweep_on = opts.window_sweep if a.window_sweep is None else a.window_sweep
    # The window sweep is the same measurement at w, 4w, 8w: by default when no --contexts are given.
    sweep = sweep_contexts(inv.geometry.max_window, sweep_on if sweep_on or not opts.contexts else False)
    limit = _model_limit(p, session_cls.format) if (sweep or opts.contexts) else None
    if limit:
        extra = context_n_ctx(0, opts)  # decoded tokens + slack beyond the context
        sweep = tuple(c for c in sweep if c + extra <= limit)  # a sweep stops at the model's limit
        if opts.contexts and max(opts.contexts) + extra > limit:
            raise UserError(
                f"--contexts {max(opts.contexts)} plus {extra} decoded positions exceeds the model's "
                f"{limit} positions (largest context: {limit - extra})",
                p,
            )
    contexts = tuple(sorted(set(opts.contexts) | set(sweep)))
    label = a.label or session_cls.runtime
    return Prepared(p, label, session_cls.format, inv, Target(p, a.session, kv), contexts, sweep)


def _geometry_for(prep: Prepared, kv_cache: str, kv_bytes_per_element: float | None) -> Inventory:
    """The inventory with the element size of the cache the session held (or the one it states)."""
    inv = replace(prep.inv)
    if kv_bytes_per_element:  # a session that states its own element size knows better than the table
        inv.geometry = replace(inv.geometry, kv_bytes_per_element=kv_bytes_per_element, kv_cache=kv_cache)
    else:
        inv.geometry = with_kv_cache(inv.geometry, prep.format, kv_cache)
    return inv


def _result(
    prep: Prepared, timing: RawTiming, contexts: list[RawContextTiming], bw: Bandwidth, opts: BenchOptions
) -> BenchResult:
    inv = _geometry_for(prep, timing.kv_cache, timing.kv_bytes_per_element)
    # The cache holds prompt + half the generated tokens on average over the decode.
    step = bytes_per_token(inv, opts.prompt_tokens + opts.gen_tokens // 2)
    res = build_result(prep.path, prep.label, timing, inv, step, bw, opts)
    res.contexts = [
        build_context_result(t, _geometry_for(prep, t.kv_cache, t.kv_bytes_per_element), bw) for t in contexts
    ]
    res.window_decode_tok_s = {
        str(c.context): c.decode_tok_s for c in res.contexts if c.context in prep.sweep
    }
    return res


def _measure_contexts(
    prepared: list[Prepared], opts: BenchOptions, progress: Callable[[str], None] | None
) -> list[list[RawContextTiming]]:
    """Each context in turn, the artifacts that want it side by side (a fresh child each)."""
    out: list[list[RawContextTiming]] = [[] for _ in prepared]
    for ctx in sorted({c for p in prepared for c in p.contexts}):
        members = [i for i, p in enumerate(prepared) if ctx in p.contexts]
        if progress:
            progress(f"context {ctx}: {len(members)} artifact(s), a fresh process each ...")
        timings = measure_context([prepared[i].target for i in members], ctx, opts)
        for i, t in zip(members, timings, strict=True):
            out[i].append(t)
    return out


def bench_group(
    items: Sequence[Artifact],
    opts: BenchOptions,
    bw: Bandwidth,
    progress: Callable[[str], None] | None = None,
) -> list[BenchResult]:
    """Artifacts loaded side by side (each in its own process), timed rounds interleaved among them; then
    each context of `opts.contexts` (or the window sweep) the same way, in fresh processes."""
    return bench_prepared([_prepare(a, opts) for a in items], opts, bw, progress)


def bench_prepared(
    prepared: list[Prepared], opts: BenchOptions, bw: Bandwidth, progress: Callable[[str], None] | None
) -> list[BenchResult]:
    timings = measure_group([p.target for p in prepared], opts)
    contexts = _measure_contexts(prepared, opts, progress)
    return [_result(p, t, c, bw, opts) for p, t, c in zip(prepared, timings, contexts, strict=True)]


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
    kv_caches: Sequence[str | None] | None = None,
) -> list[BenchResult]:
    """Measure every artifact, each in its own process, after measuring the memory bandwidth.

    interleave=True loads them all at once and alternates their timed rounds (fair under machine noise;
    needs the memory of all of them together); False measures one after another. kv_caches: a KV-cache
    type per path (None: opts.kv_cache), e.g. "f32" for a float reference among quantized artifacts."""
    opts = opts or BenchOptions()
    prepared = prepare_artifacts(paths, opts, labels, kv_caches)  # every refusal before any measurement
    bw = bandwidth or measure_bandwidth(opts.threads)
    return bench_prepared_all(prepared, opts, bw, progress, interleave)


def prepare_artifacts(
    paths: Sequence[str | Path],
    opts: BenchOptions,
    labels: Sequence[str] | None = None,
    kv_caches: Sequence[str | None] | None = None,
) -> list[Prepared]:
    """Resolve paths, runtimes, KV-cache types, contexts and byte inventories: every one-line refusal (bad
    path, a cache type the runtime lacks, a context beyond the model) comes from here, before measuring."""
    n = len(paths)
    items = [
        Artifact(p, lab, kv_cache=kv)
        for p, lab, kv in zip(
            paths,
            list(labels) if labels else [""] * n,
            list(kv_caches) if kv_caches else [None] * n,
            strict=True,
        )
    ]
    return [_prepare(a, opts) for a in items]


def bench_prepared_all(
    prepared: list[Prepared],
    opts: BenchOptions,
    bw: Bandwidth,
    progress: Callable[[str], None] | None = None,
    interleave: bool = True,
) -> list[BenchResult]:
    if interleave:
        if progress:
            progress(f"measuring {len(prepared)} artifact(s), rounds interleaved ...")
        return bench_prepared(prepared, opts, bw, progress)
    out = []
    for p in prepared:
        if progress:
            progress(f"measuring {p.path} ...")
        out.extend(bench_prepared([p], opts, bw, progress))
    return out
