"""Dense SwiGLU FFN: one packed gate/up linear, SiLU(gate) * up, down projection."""

from __future__ import annotations

from .graph import Graph
from .linear import linear
from .weights import Weights


def swiglu_mlp(g: Graph, w: Weights, node: str, x: str, prefix: str, width: int) -> str:
    """`prefix` is the HF module (`model.layers.0.mlp.` or `...mlp.shared_expert.`); width = intermediate."""
    gate_up = linear(
        g, w, x, f"{node}/gate_up_proj", [prefix + "gate_proj.weight", prefix + "up_proj.weight"]
    )
    gate, up = g.node("Split", [gate_up, g.const([width, width])], f"{node}/Split", n_out=2, axis=-1)
    act = g.op("Mul", [gate, g.op("Sigmoid", [gate], f"{node}/act_fn/Sigmoid")], f"{node}/act_fn/Mul")
    hidden = g.op("Mul", [act, up], f"{node}/Mul")
    return linear(g, w, hidden, f"{node}/down_proj", [prefix + "down_proj.weight"])
