"""RMSNorm as onnxruntime's SimplifiedLayerNormalization, fused with the residual add where there is one."""

from __future__ import annotations

from .graph import MS_DOMAIN, Graph


def rms_norm(g: Graph, node: str, x: str, gamma: str, eps: float) -> str:
    return g.op(
        "SimplifiedLayerNormalization", [x, gamma], f"{node}/LayerNorm", axis=-1, epsilon=eps, stash_type=1
    )


def skip_rms_norm(g: Graph, node: str, x: str, skip: str, gamma: str, eps: float) -> tuple[str, str]:
    """(norm(x + skip), x + skip): the residual stream continues from the second output."""
    out = g.node(
        "SkipSimplifiedLayerNormalization",
        [x, skip, gamma],
        f"{node}/SkipLayerNorm",
        domain=MS_DOMAIN,
        outputs=[f"{node}/output_0", "", "", f"{node}/output_3"],
        epsilon=eps,
    )
    return out[0], out[3]
