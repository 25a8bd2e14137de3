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
    """RoPE inverse frequencies and output scaling, from transformers' own rope initializers."""
    if spec.rope_scaling is None:
        hd = spec.head_dim
        inv = 1.0 / (spec.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
        return inv, 1.0
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
    """cos/sin caches [max_positions, head_dim / 2], computed in float64 then stored as float32."""
    inv, scaling = inverse_frequencies(spec)
    pos = np.arange(spec.max_position_embeddings, dtype=np.float64)[:, None]
    angles = pos * inv[None, :]
    cos = (np.cos(angles) * scaling).astype(np.float32)
    sin = (np.sin(angles) * scaling).astype(np.float32)
    return g.weight("cos_cache", cos), g.weight("sin_cache", sin)


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
