"""Linear layers: float MatMul (+ Add) or MatMulNBits, optionally several HF matrices packed into one."""

from __future__ import annotations

import numpy as np

from .graph import MS_DOMAIN, Graph
from .pack import concat_rows, pack_nbits
from .weights import Weights


def init_name(node: str, suffix: str) -> str:
    """`/model/layers.0/attn/qkv_proj` -> `model.layers.0.attn.qkv_proj.<suffix>` (genai-style)."""
    return node.strip("/").replace("/", ".") + "." + suffix


def linear(g: Graph, w: Weights, x: str, node: str, names: list[str], biases: list[str] | None = None) -> str:
    """y = x @ concat(W_i)^T (+ concat(b_i)) for HF weights `names` [N_i, K], as one node when possible.

    All quantized with one scheme: a MatMulNBits over the concatenated codes. All float: one MatMul.
    Mixed precisions (a per-tensor override on one of them) fall back to one linear each plus a Concat.
    """
    qs = [w.quantized(n) for n in names]
    same_scheme = all(q is not None for q in qs) and len({q.scheme for q in qs}) == 1
    if len(names) > 1 and not (same_scheme or all(q is None for q in qs)):
        parts = [
            linear(g, w, x, f"{node}/part{i}", [n], None if biases is None else [biases[i]])
            for i, n in enumerate(names)
        ]
        return g.op("Concat", parts, f"{node}/Concat", axis=-1)
    bias = None
    if biases:
        bias = np.concatenate([w.array(b) for b in biases]).astype(np.float32)
    if qs[0] is not None:
        packed = pack_nbits(concat_rows(qs) if len(qs) > 1 else qs[0])
        inputs = [
            x,
            g.weight(init_name(node, "MatMul.qweight"), packed.blocks),
            g.weight(init_name(node, "MatMul.scales"), packed.scales),
        ]
        if packed.zeros is not None:
            inputs.append(g.weight(init_name(node, "MatMul.qzeros"), packed.zeros))
        if bias is not None:
            inputs += [""] * (5 - len(inputs)) + [g.weight(init_name(node, "MatMul.bias"), bias)]
        return matmul_nbits(g, inputs, node, packed, w.accuracy_level)
    weight = np.concatenate([w.array(n) for n in names], axis=0).T  # [K, N] for MatMul
    y = g.op("MatMul", [x, w.float_input(g, init_name(node, "MatMul.weight"), weight)], f"{node}/MatMul")
    if bias is not None:
        y = g.op("Add", [y, g.weight(init_name(node, "Add.bias"), bias)], f"{node}/Add")
    return y


def matmul_nbits(g, inputs: list[str], node: str, packed, accuracy_level: int) -> str:
    """One com.microsoft.MatMulNBits node over packed blocks (inputs: x, blocks, scales[, zeros[, ..., bias]])."""
    return g.op(
        "MatMulNBits",
        inputs,
        f"{node}/MatMulNBits",
        domain=MS_DOMAIN,
        K=packed.k,
        N=packed.n,
        bits=packed.bits,
        block_size=packed.block_size,
        accuracy_level=accuracy_level,
    )
