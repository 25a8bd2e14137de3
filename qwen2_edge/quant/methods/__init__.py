"""Quantization methods: one row per method, each `fn(ckpt, base, policy, **options) -> QuantizedModel`.

- rtn: round-to-nearest per block (no data).
- gptq: Hessian-based error compensation on calibration text, layer by layer, MoE-aware, with a
  per-block scale (clipping) search; options: calib, calib_tokens, seq_len, damp, act_order,
  clip_search, min_expert_tokens, progress.
"""

from __future__ import annotations

from collections.abc import Callable

from .layerwise import quantize_layerwise
from .rtn import quantize_rtn_model

METHODS: dict[str, Callable] = {
    "rtn": quantize_rtn_model,
    "gptq": quantize_layerwise,
}
