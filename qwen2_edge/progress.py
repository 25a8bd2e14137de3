"""One-line progress with an ETA for long exports, on stderr and only when stderr is a terminal.

Work is counted in weights (elements), so an expert stack of 500 M weights moves the bar as much as it costs
and a norm vector does not; the ETA assumes the remaining weights go at the rate seen so far.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """`advance(n)` after each tensor group; `close()` at the end. Silent when stderr is not a TTY (logs,
    pipes, tests) unless `stream` is given, and during the first `quiet_s` seconds (small exports)."""

    def __init__(
        self,
        label: str,
        total: int,
        stream: TextIO | None = None,
        interval_s: float = 1.0,
        quiet_s: float = 2.0,
    ) -> None:
        self.label, self.total = label, max(int(total), 1)
        self.stream = stream if stream is not None else (sys.stderr if sys.stderr.isatty() else None)
        self.interval_s, self.quiet_s = interval_s, quiet_s
        self.done = 0
        self.t0 = self._last = time.monotonic()
        self._shown = False

    def advance(self, n: int, what: str = "") -> None:
        self.done = min(self.done + int(n), self.total)
        now = time.monotonic()
        if self.stream is None or now - self.t0 < self.quiet_s or now - self._last < self.interval_s:
            return
        self._last = now
        self.stream.write("\r" + self.line(now - self.t0, what) + "\033[K")
        self.stream.flush()
        self._shown = True

    def line(self, elapsed: float, what: str = "") -> str:
        frac = self.done / self.total
        eta = elapsed * (1 - frac) / frac if frac > 0 else float("nan")
        tail = f" ({what})" if what else ""
        return f"{self.label}: {100 * frac:5.1f}% of {self.total / 1e9:.2f} G weights, {_clock(elapsed)} elapsed, ETA {_clock(eta)}{tail}"

    def close(self) -> None:
        if self._shown and self.stream is not None:
            self.stream.write("\n")
            self.stream.flush()


def _clock(s: float) -> str:
    if s != s:  # nan
        return "?"
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
