"""Round-to-nearest: every selected matrix quantized on its own, no calibration data."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ...model.checkpoint import Checkpoint
from ..model import LazyTensors, QuantizedModel
from ..policy import QuantPolicy
from ..scheme import QuantScheme
from ..tensor import QuantizedTensor, quantize_rtn


def quantize_rtn_model(
    ckpt: Checkpoint, base: QuantScheme, policy: QuantPolicy, lazy: bool = False, **_ignored: Any
) -> QuantizedModel:
    """RTN over the checkpoint (calibration arguments are accepted and unused). Tensors are independent, and
    numpy releases the GIL in the block arithmetic, so they are spread over the cores (at most two in
    flight per core: bounded memory). `lazy`: quantize each tensor when an exporter reads it, and keep
    none (streaming export: memory bounded by the largest tensor, not the model)."""
    from concurrent.futures import ThreadPoolExecutor

    if lazy:
        schemes = {}
        for name in ckpt.canonical_names():
            shape = ckpt.canonical_shape(name)
            scheme = policy.scheme_for(name, len(shape), base) if np.prod(shape) else None
            if scheme is not None:
                schemes[name] = scheme
        make = lambda name, scheme: quantize_rtn(name, ckpt.canonical(name).numpy(), scheme)  # noqa: E731
        return QuantizedModel(ckpt, base, policy, "rtn", LazyTensors(schemes, make))

    def one(name: str) -> tuple[str, QuantizedTensor | None]:
        w = ckpt.canonical(name)
        # a zero-element tensor (a Qwen2-MoE without a shared expert has 0-wide ones) has nothing to quantize
        scheme = policy.scheme_for(name, w.ndim, base) if w.numel() else None
        return name, None if scheme is None else quantize_rtn(name, np.asarray(w.numpy()), scheme)

    workers = max(1, min(len(os.sched_getaffinity(0)), 4))
    with ThreadPoolExecutor(workers) as pool:
        done = list(pool.map(one, ckpt.canonical_names()))
    tensors = {name: q for name, q in done if q is not None}
    return QuantizedModel(ckpt, base, policy, "rtn", tensors)
