"""QuantizedModel: the typed hand-off from quantization to the exporters."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..model.checkpoint import Checkpoint
from .policy import POLICIES, QuantPolicy
from .scheme import QuantScheme
from .tensor import QuantizedTensor


class LazyTensors(Mapping[str, QuantizedTensor]):
    """name -> QuantizedTensor, computed from the checkpoint on every access and never kept: a streaming
    exporter holds one tensor at a time, so memory stays bounded by the largest tensor whatever the model
    size. Membership and schemes are known up front (from shapes and the policy), without reading weights.
    Quantization must be deterministic (RTN is): two accesses give the same codes."""

    def __init__(self, schemes: dict[str, QuantScheme], make: Callable[[str, QuantScheme], QuantizedTensor]):
        self.schemes = schemes
        self._make = make

    def __getitem__(self, name: str) -> QuantizedTensor:
        return self._make(name, self.schemes[name])

    def __contains__(self, name: object) -> bool:
        return name in self.schemes

    def __iter__(self) -> Iterator[str]:
        return iter(self.schemes)

    def __len__(self) -> int:
        return len(self.schemes)


@dataclass
class QuantizedModel:
    """Float checkpoint + the quantized tensors (canonical names, experts stacked) + how they were made."""

    checkpoint: Checkpoint
    base: QuantScheme
    policy: QuantPolicy
    method: str
    tensors: Mapping[str, QuantizedTensor]  # a dict, or LazyTensors (streaming export)
    info: dict[str, Any] = field(default_factory=dict)  # calibration stats etc.

    @property
    def spec(self):
        return self.checkpoint.spec

    @property
    def lazy(self) -> bool:
        return isinstance(self.tensors, LazyTensors)

    def scheme_of(self, name: str) -> QuantScheme | None:
        """The scheme tensor `name` is quantized with (None: kept float), without computing it."""
        if isinstance(self.tensors, LazyTensors):
            return self.tensors.schemes.get(name)
        q = self.tensors.get(name)
        return q.scheme if q is not None else None

    def float_tensor(self, name: str) -> torch.Tensor:
        """The tensor as the quantized model computes with it (dequantized, or the float original)."""
        q = self.tensors.get(name)
        if q is not None:
            return torch.from_numpy(q.dequantize())
        return self.checkpoint.canonical(name)

    def plan(self) -> list[dict[str, Any]]:
        """Per-tensor decision table for --json output and reports."""
        rows = []
        for name in self.checkpoint.canonical_names():
            s = self.scheme_of(name)
            rows.append({"tensor": name, "quant": s.name if s else "float"})
        return rows

    def save_dequantized(self, folder: str | Path) -> Path:
        """Write a float HF checkpoint with the dequantized weights (the exporters' exact target)."""
        from ..model.layout import expected_tensors
        from ..testing.hf_writer import write_hf_checkpoint

        spec = self.spec
        names = expected_tensors(spec)
        tensors: dict[str, torch.Tensor] = {}
        for name in names:
            if ".mlp.experts." in name:
                stem, rest = name.split(".mlp.experts.")
                e, proj, _ = rest.split(".")
                tensors[name] = self.float_tensor(f"{stem}.mlp.experts.{proj}")[int(e)].contiguous()
            else:
                tensors[name] = self.float_tensor(name)
        return write_hf_checkpoint(self.checkpoint, tensors, folder)


def quantize_model(
    ckpt: Checkpoint,
    base: QuantScheme,
    policy: QuantPolicy | str = "default",
    method: str = "rtn",
    **method_kwargs: Any,
) -> QuantizedModel:
    """Quantize every matrix the policy selects with `method` (a row of quant.methods.METHODS)."""
    from ..errors import UserError
    from .methods import METHODS

    pol = POLICIES[policy] if isinstance(policy, str) else policy
    if method not in METHODS:
        raise UserError(f"unknown quantization method {method!r} (choose from {', '.join(METHODS)})")
    return METHODS[method](ckpt, base, pol, **method_kwargs)
