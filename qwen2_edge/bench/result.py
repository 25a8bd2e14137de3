"""BenchResult: one artifact's measured numbers, the roofline beside them, as a table row and JSON."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .bandwidth import Bandwidth
from .bytes_per_token import Inventory, StepBytes, artifact_file_bytes
from .measure import BenchOptions, RawTiming
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
    window: int | None = None
    window_decode_tok_s: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        # Significant digits, not decimals: a tiny fixture's roofline fraction is ~1e-5 and must stay > 0.
        return {k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in asdict(self).items()}


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
        window=inv.geometry.max_window,
        window_decode_tok_s=timing.window_decode_tok_s,
    )
