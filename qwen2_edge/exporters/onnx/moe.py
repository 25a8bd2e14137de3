"""Qwen2-MoE sparse block: ONE com.microsoft.MoE / QMoE node for the routed experts + the dense shared expert.

Routing matches transformers' Qwen2MoeSparseMoeBlock: softmax over the router logits, top-k, and (only
when norm_topk_prob) renormalized over the k chosen; onnxruntime's kernels take the logits and do the
softmax themselves (`normalize_routing_weights` = norm_topk_prob). Measured quirk of the CPU QMoE kernel
(onnxruntime 1.32): it renormalizes over the top-k even with normalize_routing_weights=0, so for
norm_topk_prob=False we also feed its `router_weights` input = softmax over all experts, whose gathered
values it then mixes with unchanged (guarded by the `moe` fixture's int4 test). Experts are SwiGLU with gate and up fused
into FC1 *interleaved* row by row (swiglu_fusion=1: rows g0, u0, g1, u1, ...), activation
silu(g) * u (activation_alpha=1, activation_beta=0, no clamp). The shared expert's output is scaled by
sigmoid(shared_expert_gate(x)) and added.
"""

from __future__ import annotations

from ...errors import UnsupportedError
from ...model.spec import MoEFFN
from .ffn import swiglu_mlp
from .graph import MS_DOMAIN, Graph
from .linear import init_name, linear
from .pack import interleave_quantized, interleave_rows, pack_nbits, pad_output_rows
from .weights import Weights


def sparse_moe_block(g: Graph, w: Weights, node: str, x: str, layer: int, ffn: MoEFFN) -> str:
    m = f"model.layers.{layer}.mlp."
    logits = linear(g, w, x, f"{node}/gate", [m + "gate.weight"])
    router = g.op("Reshape", [logits, g.const([-1, ffn.num_experts])], f"{node}/gate/Reshape")
    routed = _experts(g, w, f"{node}/experts", x, router, m + "experts.", ffn)
    if not ffn.shared_intermediate:
        return routed
    shared = swiglu_mlp(g, w, f"{node}/shared_expert", x, m + "shared_expert.", ffn.shared_intermediate)
    gate = linear(g, w, x, f"{node}/shared_expert_gate", [m + "shared_expert_gate.weight"])
    gate = g.op("Sigmoid", [gate], f"{node}/shared_expert_gate/Sigmoid")
    shared = g.op("Mul", [shared, gate], f"{node}/shared_expert_gate/Mul")
    return g.op("Add", [routed, shared], f"{node}/Add")


def _experts(g: Graph, w: Weights, node: str, x: str, router: str, prefix: str, ffn: MoEFFN) -> str:
    names = [prefix + p for p in ("gate_proj", "up_proj", "down_proj")]
    qs = [w.quantized(n) for n in names]
    attrs = dict(
        k=ffn.top_k,
        activation_type="swiglu",
        swiglu_fusion=1,
        activation_alpha=1.0,
        activation_beta=0.0,
        normalize_routing_weights=int(ffn.norm_topk_prob),
        use_sparse_mixer=0,
    )
    base = init_name(node, "")
    if all(q is None for q in qs):
        gate, up, down = (w.array(n) for n in names)
        fc1 = w.float_input(g, base + "gate_up_proj.weight", interleave_rows(gate, up))
        fc2 = w.float_input(g, base + "down_proj.weight", down)
        return g.op("MoE", [x, router, fc1, "", fc2], f"{node}/MoE", domain=MS_DOMAIN, **attrs)
    if any(q is None for q in qs) or len({q.scheme for q in qs}) != 1:
        raise UnsupportedError(
            f"{prefix}*: the routed experts of one layer must share one quantization (QMoE holds one)"
        )
    scheme = qs[0].scheme
    if w.spec.hidden_size % scheme.block_size:
        raise UnsupportedError(
            f"QMoE needs hidden_size {w.spec.hidden_size} divisible by the block size {scheme.block_size}"
        )
    # An expert width that is not a whole number of blocks is zero-padded (exact): the extra gate/up rows
    # are 0, so silu(0) * 0 = 0 meets down_proj's padded (zero-code) columns.
    width = -(-ffn.expert_intermediate // scheme.block_size) * scheme.block_size
    qs = [pad_output_rows(qs[0], width), pad_output_rows(qs[1], width), qs[2]]
    fc1 = pack_nbits(interleave_quantized(qs[0], qs[1]))
    fc2 = pack_nbits(qs[2])
    inputs = [
        x,
        router,
        g.weight(base + "gate_up_proj.qweight", fc1.flat_blocks),
        g.weight(base + "gate_up_proj.scales", fc1.scales),
        "",
        g.weight(base + "down_proj.qweight", fc2.flat_blocks),
        g.weight(base + "down_proj.scales", fc2.scales),
        "",
    ]
    optional = ["", "", "", "", "", ""]  # fc3 weights/scales/bias, fc1/fc2/fc3 zero points
    if not scheme.symmetric:
        optional[3] = g.weight(base + "gate_up_proj.qzeros", fc1.zeros)
        optional[4] = g.weight(base + "down_proj.qzeros", fc2.zeros)
    if not ffn.norm_topk_prob:
        optional.append(g.op("Softmax", [router], f"{node}/router_weights/Softmax", axis=-1))
    while optional and not optional[-1]:
        optional.pop()
    inputs += optional
    return g.op(
        "QMoE",
        inputs,
        f"{node}/QMoE",
        domain=MS_DOMAIN,
        expert_weight_bits=scheme.bits,
        block_size=scheme.block_size,
        accuracy_level=w.accuracy_level,
        **attrs,
    )
