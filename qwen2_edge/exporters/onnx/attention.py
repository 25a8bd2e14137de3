"""com.microsoft.GroupQueryAttention with fused rotary embedding, one node per layer.

Window convention (checked by tests/test_onnx_export.py against transformers): transformers lets query i
see keys j with i - w < j <= i, i.e. w keys including itself. onnxruntime's GroupQueryAttention CPU
kernel with local_window_size = L lets query i see keys j with j > i - L, the same rule, so a sliding
layer of window w gets local_window_size = w (w - 1 was measured to differ from the reference by 3.2 in
the logits of the `sliding` fixture). Full-attention layers get -1.
"""

from __future__ import annotations

import numpy as np

from ...errors import UnsupportedError
from ...model.spec import LayerSpec, ModelSpec
from .graph import MS_DOMAIN, Graph


def ort_local_window(window: int | None) -> int:
    return -1 if window is None else window


def inverse_frequencies(spec: ModelSpec) -> tuple[np.ndarray, float]:
    """RoPE inverse frequencies and output scaling, from transformers' own rope initializers (default RoPE:
    the same float32 torch expression as its Qwen2RotaryEmbedding, so the graph's float32 angles are
    bit-identical to the reference's)."""
    if spec.rope_scaling is None:
        import torch

        hd = spec.head_dim
        inv = 1.0 / (spec.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float) / hd))
        return inv.numpy(), 1.0
    rope_type = spec.rope_scaling.get("rope_type", spec.rope_scaling.get("type"))
    if rope_type == "dynamic":
        raise UnsupportedError(
            "dynamic RoPE scaling changes with sequence length; a fixed cache cannot hold it"
        )
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if rope_type not in ROPE_INIT_FUNCTIONS:
        raise UnsupportedError(f"RoPE scaling type {rope_type!r} is not supported by the ONNX exporter")
    inv, scaling = ROPE_INIT_FUNCTIONS[rope_type](spec.hf_config(), "cpu")
    return inv.double().numpy(), float(scaling)


def rotary_caches(g: Graph, spec: ModelSpec) -> tuple[str, str]:
    """cos/sin caches [max_positions, head_dim / 2] as a constant subgraph onnxruntime folds at load:
    Range(positions) x inv_freq -> Cos / Sin, in float32 like transformers' own rotary embedding. Stored
    tables would cost 2 x max_positions x head_dim x 2 bytes on disk (8.4 MB at 32768 positions and head
    size 64, four times the int4 weights of a small student) for what is one row per token."""
    inv, scaling = inverse_frequencies(spec)
    node = "/model/rotary_emb"
    inv_freq = g.weight("model.rotary_emb.inv_freq", inv.astype(np.float32)[None, :])
    positions = g.op(
        "Range",
        [g.scalar(0.0), g.scalar(float(spec.max_position_embeddings)), g.scalar(1.0)],
        f"{node}/Range",
    )
    positions = g.op("Unsqueeze", [positions, g.const([1])], f"{node}/Unsqueeze")
    angles = g.op("Mul", [positions, inv_freq], f"{node}/Mul")
    caches = []
    for fn, name in (("Cos", "cos_cache"), ("Sin", "sin_cache")):
        out = g.op(fn, [angles], f"{node}/{fn}")
        if scaling != 1.0:
            out = g.op("Mul", [out, g.const(float(scaling), np.float32)], f"{node}/{fn}/Mul")
        caches.append(g.op("Identity", [out], f"{node}/{name}"))
    return caches[0], caches[1]


def group_query_attention(
    g: Graph,
    node: str,
    spec: ModelSpec,
    layer: LayerSpec,
    qkv: str | tuple[str, str, str],
    past: tuple[str, str],
    present: tuple[str, str],
    seqlens_k: str,
    total_len: str,
    rotary: tuple[str, str],
) -> str:
    """Attention output [batch, seq, heads * head_dim]; writes the layer's present key/value."""
    q, k, v = (qkv, "", "") if isinstance(qkv, str) else qkv
    inputs = [q, k, v, past[0], past[1], seqlens_k, total_len, rotary[0], rotary[1]]
    return g.node(
        "GroupQueryAttention",
        inputs,
        node,
        domain=MS_DOMAIN,
        outputs=[f"{node}/output_0", present[0], present[1]],
        num_heads=spec.num_heads,
        kv_num_heads=spec.num_kv_heads,
        scale=1.0 / float(np.sqrt(spec.head_dim)),
        local_window_size=ort_local_window(layer.attention.window),
        do_rotary=1,
        rotary_interleaved=0,
        **({"sliding_window_cache": 1} if layer.attention.window is not None else {}),
    )[0]
