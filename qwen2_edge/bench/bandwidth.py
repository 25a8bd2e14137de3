"""The machine's streaming memory read bandwidth, measured with numpy in the benchmark's own run.

A uint64 OR-reduction over a buffer many times larger than the last-level cache: integer, vectorized,
no floating-point dependency chain, so the loop is bound by how fast memory streams into the cores.
Each of `threads` threads reduces its own contiguous slice (numpy releases the GIL in the reduction).
The best of several passes is the bandwidth ceiling used for the roofline; the median is reported too.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

MIN_BUFFER_MB = 512


@dataclass(frozen=True)
class Bandwidth:
    gb_s: float  # best pass, 1e9 bytes/s
    median_gb_s: float
    threads: int
    buffer_mb: int
    passes: int

    @property
    def bytes_per_s(self) -> float:
        return self.gb_s * 1e9

    def to_json(self) -> dict:
        return {k: round(v, 2) if isinstance(v, float) else v for k, v in asdict(self).items()}


def last_level_cache_bytes() -> int:
    """Largest CPU cache reported by sysfs (0 when unknown)."""
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip().upper()
        mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * mult)
    return max(sizes, default=0)


def measure_bandwidth(threads: int = 1, buffer_mb: int | None = None, passes: int = 6) -> Bandwidth:
    """Stream-read a buffer of max(512 MiB, 16 x LLC) `passes` times with `threads` threads."""
    threads = max(1, int(threads))
    if buffer_mb is None:
        buffer_mb = max(MIN_BUFFER_MB, 16 * last_level_cache_bytes() // 2**20)
    n_bytes = buffer_mb * 2**20
    # np.ones writes every page, so no pass pays for page faults.
    buf = np.ones(n_bytes // 8, dtype=np.uint64)
    chunks = np.array_split(buf, threads)
    rates = []
    try:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(np.bitwise_or.reduce, chunks))  # warm-up pass
            for _ in range(passes):
                t0 = time.perf_counter()
                list(pool.map(np.bitwise_or.reduce, chunks))
                rates.append(buf.nbytes / (time.perf_counter() - t0) / 1e9)
    finally:
        del chunks, buf
    return Bandwidth(max(rates), statistics.median(rates), threads, buffer_mb, passes)
