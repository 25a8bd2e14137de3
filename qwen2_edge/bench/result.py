"""BenchResult: one artifact's measured numbers, the roofline beside them, as a table row and JSON."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .bandwidth import Bandwidth
from .bytes_per_token import Inventory, StepBytes, artifact_file_bytes, bytes_per_token, kv_cache_bytes
from .measure import BenchOptions, RawContextTiming, RawTiming
from .roofline import roofline_fraction, roofline_tok_s

# Keys every row carries in the JSON (the contract), in table order.
REQUIRED_KEYS = (
    "path",
    "runtime",
    "prefill_tok_s",
    "decode_tok_s",
    "ttft_s",
    "peak_rss_mb",
    "file_mb",
    "bits_per_weight",
    "roofline_fraction",
)


def _json(obj) -> dict[str, Any]:
    # Significant digits, not decimals: a tiny fixture's roofline fraction is ~1e-5 and must stay > 0.
    return {k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in asdict(obj).items()}


@dataclass
class ContextResult:
    """One artifact with `context` tokens cached, in a session sized for that context."""

    context: int  # tokens cached before the timed decode
    n_ctx: int  # positions the session was sized for (context + decoded tokens + slack)
    kv_cache: str  # the cache type the session held
    load_s: float
    prefill_tok_s: float  # filling the context, chunks of measure.PREFILL_CHUNK tokens
    decode_tok_s: float  # median over rounds
    decode_tok_s_min: float
    decode_tok_s_max: float
    ms_per_token: float  # 1000 / median decode tok/s
    gen_tokens: int  # per round; decoding continues from round to round, so the context grows by this
    peak_rss_mb: float  # the child's VmHWM: load, fill and decode at this context
    baseline_rss_mb: float
    kv_bytes: int  # the KV cache with `context` tokens cached: measured where the runtime says, else computed
    kv_bytes_source: str  # "measured" (Session.kv_cache_bytes()) or "computed" (the byte model)
    kv_bytes_computed: int  # the byte model's value (window-capped, at the cache type's element size)
    decode_context: float  # mean cached positions over the timed decode steps
    kv_bytes_per_token: int  # KV read per decode step at decode_context (byte model)
    bytes_per_token: int  # weights + KV per decode step at decode_context
    roofline_tok_s: float
    roofline_fraction: float

    def to_json(self) -> dict[str, Any]:
        return _json(self)


@dataclass
class BenchResult:
    path: str
    runtime: str
    format: str
    quant: str
    label: str
    threads: int
    prompt_tokens: int
    gen_tokens: int
    repeat: int
    load_s: float
    ttft_s: float  # median over repeats
    prefill_tok_s: float  # median
    prefill_tok_s_min: float
    prefill_tok_s_max: float
    decode_tok_s: float  # median
    decode_tok_s_min: float
    decode_tok_s_max: float
    peak_rss_mb: float
    baseline_rss_mb: float  # interpreter + runtime libraries, before the model was loaded
    file_mb: float
    bits_per_weight: float
    weight_bytes_per_token: int
    kv_bytes_per_token: int
    bytes_per_token: int
    bandwidth_gb_s: float
    roofline_tok_s: float
    roofline_fraction: float
    kv_cache: str = "f32"  # the KV-cache type the session held
    window: int | None = None
    # Decode tok/s at the window sweep's contexts (w, 4w, 8w), keyed by context; empty without the sweep.
    window_decode_tok_s: dict[str, float] = field(default_factory=dict)
    contexts: list[ContextResult] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = _json(self)
        out["contexts"] = [c.to_json() for c in self.contexts]
        return out


def build_result(
    path: str | Path,
    label: str,
    timing: RawTiming,
    inv: Inventory,
    step: StepBytes,
    bw: Bandwidth,
    opts: BenchOptions,
) -> BenchResult:
    prefill = [opts.prompt_tokens / s for s in timing.prefill_s]
    decode = [opts.gen_tokens / s for s in timing.decode_s]
    med = statistics.median(decode)
    return BenchResult(
        path=str(path),
        runtime=timing.runtime,
        format=timing.format,
        quant=timing.quant,
        label=label,
        threads=opts.threads,
        prompt_tokens=opts.prompt_tokens,
        gen_tokens=opts.gen_tokens,
        repeat=opts.repeat,
        load_s=timing.load_s,
        ttft_s=statistics.median(timing.ttft_s),
        prefill_tok_s=statistics.median(prefill),
        prefill_tok_s_min=min(prefill),
        prefill_tok_s_max=max(prefill),
        decode_tok_s=med,
        decode_tok_s_min=min(decode),
        decode_tok_s_max=max(decode),
        peak_rss_mb=timing.peak_rss_mb,
        baseline_rss_mb=timing.baseline_rss_mb,
        file_mb=artifact_file_bytes(path) / 2**20,
        bits_per_weight=inv.bits_per_weight(),
        weight_bytes_per_token=step.weights,
        kv_bytes_per_token=step.kv,
        bytes_per_token=step.total,
        bandwidth_gb_s=bw.gb_s,
        roofline_tok_s=roofline_tok_s(bw.bytes_per_s, step.total),
        roofline_fraction=roofline_fraction(med, bw.bytes_per_s, step.total),
        kv_cache=timing.kv_cache,
        window=inv.geometry.max_window,
    )


def build_context_result(t: RawContextTiming, inv: Inventory, bw: Bandwidth) -> ContextResult:
    """Timings at one context beside the byte model at that context (inv: geometry of t's cache type)."""
    decode = [t.gen_tokens / s for s in t.decode_s]
    med = statistics.median(decode)
    computed = kv_cache_bytes(inv.geometry, t.context)
    # Decoding continues from round to round: the steps saw context .. context + rounds * gen - 1.
    mean_ctx = t.context + (len(t.decode_s) * t.gen_tokens - 1) / 2
    step = bytes_per_token(inv, round(mean_ctx))
    return ContextResult(
        context=t.context,
        n_ctx=t.n_ctx,
        kv_cache=t.kv_cache,
        load_s=t.load_s,
        prefill_tok_s=t.context / t.fill_s,
        decode_tok_s=med,
        decode_tok_s_min=min(decode),
        decode_tok_s_max=max(decode),
        ms_per_token=1000.0 / med,
        gen_tokens=t.gen_tokens,
        peak_rss_mb=t.peak_rss_mb,
        baseline_rss_mb=t.baseline_rss_mb,
        kv_bytes=computed if t.kv_bytes is None else t.kv_bytes,
        kv_bytes_source="computed" if t.kv_bytes is None else "measured",
        kv_bytes_computed=computed,
        decode_context=mean_ctx,
        kv_bytes_per_token=step.kv,
        bytes_per_token=step.total,
        roofline_tok_s=roofline_tok_s(bw.bytes_per_s, step.total),
        roofline_fraction=roofline_fraction(med, bw.bytes_per_s, step.total),
    )
