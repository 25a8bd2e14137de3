"""Round-to-nearest: every selected matrix quantized on its own, no calibration data."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...model.checkpoint import Checkpoint
from ..model import QuantizedModel
from ..policy import QuantPolicy
from ..scheme import QuantScheme
from ..tensor import QuantizedTensor, quantize_rtn


def quantize_rtn_model(
    ckpt: Checkpoint, base: QuantScheme, policy: QuantPolicy, **_ignored: Any
) -> QuantizedModel:
    """RTN over the checkpoint, one tensor at a time (calibration arguments are accepted and unused)."""
    tensors: dict[str, QuantizedTensor] = {}
    for name in ckpt.canonical_names():
        w = ckpt.canonical(name)
        scheme = policy.scheme_for(name, w.ndim, base)
        if scheme is not None:
            tensors[name] = quantize_rtn(name, np.asarray(w.numpy()), scheme)
    return QuantizedModel(ckpt, base, policy, "rtn", tensors)
