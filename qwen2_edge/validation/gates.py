"""Pass/fail gates of `qwen2-edge check`: one row per gate (summary key, direction, default, CLI flag).

Defaults are meant for an 8-bit or good 4-bit artifact on real text: a mean KL divergence of 0.05 nats is
about what llama.cpp's Q4_K_M shows on 7B-class models; float artifacts sit near 1e-9. A gate that sees
NaN fails.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Gate:
    name: str  # option name in CheckOptions / --max-kld etc.
    key: str  # summary key it reads
    upper: bool  # True: value must be <= limit; False: value must be >= limit
    default: float
    flag: str
    help: str

    def holds(self, summary: dict[str, Any], limit: float) -> bool:
        v = summary.get(self.key)
        if v is None or not isinstance(v, (int, float)) or math.isnan(v):
            return False
        return v <= limit if self.upper else v >= limit


GATES: tuple[Gate, ...] = (
    Gate("max_kld", "kld_mean", True, 0.05, "--max-kld", "largest mean KL divergence (nats) allowed"),
    Gate("min_top1", "top1_agreement", False, 0.90, "--min-top1", "smallest top-1 agreement allowed"),
    Gate("max_dppl", "delta_ppl_rel", True, 0.05, "--max-dppl",
         "largest perplexity increase allowed, relative to the reference (0.05 = +5%%)"),
    # The artifact's KV-cache decode against its own prefill: same weights, so only kernel rounding
    # (~1e-6 at worst) is expected; a cache bug (positions, sliding window, stale entries) is far above.
    Gate("max_decode_kld", "decode_kld_max", True, 1e-3, "--max-decode-kld",
         "largest KL divergence allowed between the artifact's cached decode and its own prefill"),
)  # fmt: skip

DEFAULT_LIMITS: dict[str, float] = {g.name: g.default for g in GATES}


def evaluate(summary: dict[str, Any], limits: dict[str, float]) -> dict[str, bool]:
    """gate name -> held; plus `finite` (NaN or inf logits always fail)."""
    result = {g.name: g.holds(summary, limits.get(g.name, g.default)) for g in GATES}
    result["finite"] = bool(summary.get("finite", False))
    return result
