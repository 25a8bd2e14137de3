"""Canonical tensor names <-> parameters of a live transformers model.

The quantizers work on canonical names (experts stacked [E, I, H]); transformers 5 keeps a MoE layer's
experts fused as `gate_up_proj` [E, 2I, H] and `down_proj` [E, H, I]. These helpers read and overwrite
weights in place, so a float model can be turned into "the quantized model" without a second copy.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def _expert_slot(model, name: str) -> tuple[torch.nn.Parameter, slice | None]:
    """(fused parameter, slice of dim 1) for a canonical stacked expert tensor."""
    layer = int(name.split(".")[2])
    experts = model.model.layers[layer].mlp.experts
    proj = name.rsplit(".", 1)[1]
    if proj == "down_proj":
        return experts.down_proj, None
    inter = experts.gate_up_proj.shape[1] // 2
    return experts.gate_up_proj, slice(0, inter) if proj == "gate_proj" else slice(inter, 2 * inter)


def get_weight(model, name: str) -> torch.Tensor:
    """The model's current value of canonical tensor `name` (a view; clone before modifying the model)."""
    if ".mlp.experts." in name:
        param, sl = _expert_slot(model, name)
        return param.data if sl is None else param.data[:, sl]
    return model.get_parameter(name).data


@torch.no_grad()
def set_weight(model, name: str, value: torch.Tensor) -> None:
    """Overwrite canonical tensor `name` in the model (tied embeddings change lm_head too, as they should)."""
    get_weight(model, name).copy_(value.to(torch.float32))


def snapshot(model, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """Copies of the named weights, to restore with `restore` after a temporary substitution."""
    return {n: get_weight(model, n).clone() for n in names}


def restore(model, saved: dict[str, torch.Tensor]) -> None:
    for n, v in saved.items():
        set_weight(model, n, v)


def apply_quantized(model, tensors: dict) -> None:
    """Write every QuantizedTensor's dequantized values into `model` (QuantizedModel.tensors)."""
    for name, q in tensors.items():
        set_weight(model, name, torch.from_numpy(q.dequantize()))
