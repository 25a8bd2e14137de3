"""Which llama.cpp architecture holds a Qwen2 / Qwen2-MoE checkpoint exactly, or a refusal saying why none does.

Each architecture is a class in archs/ (metadata keys, tensor mapping, and `blockers`: what it cannot
compute exactly). The candidates are tried in the order below and the first exact one wins; the order puts
the cheapest first (README section "GGUF: hybrid MoE and sliding windows"):

- dense: `qwen2` (one to one), else `granite_swa` (sliding windows).
- MoE hybrid (some layers dense, `mlp_only_layers` / `decoder_sparse_step`): `step35` (its layers are dense
  or MoE, so a dense layer is written once), else `qwen2moe`, else `granite_swa` with experts. The latter
  two have experts in every layer: a dense layer becomes E copies of its SwiGLU under an all-zero router,
  and every expert is widened to the dense width, so each decode step reads top_k copies. They remain for
  what step35 cannot run: a learned shared-expert gate (qwen2moe, full attention) and linear RoPE scaling.
- MoE in every layer: `qwen2moe`, else `granite_swa` with experts, else `step35` (the same bytes read per
  token; step35 stores a tied embedding table twice).

Shared requirements: default or linear RoPE, one window size. Everything else (e.g. a learned
shared-expert gate with sliding windows or renormalized top-k) is refused with a one-line error.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ...errors import UnsupportedError
from ...model.spec import DenseFFN, ModelSpec, MoEFFN
from .archs import Encoding, GraniteSwa, GraniteSwaMoe, OutTensor, Qwen2, Qwen2Moe, Step35
from .archs.base import dense_layers, moe, moe_layers, sliding_layers

__all__ = ["Encoding", "OutTensor", "choose_encoding"]

DENSE: tuple[type[Encoding], ...] = (Qwen2, GraniteSwa)
HYBRID: tuple[type[Encoding], ...] = (Step35, Qwen2Moe, GraniteSwaMoe)
ALL_MOE: tuple[type[Encoding], ...] = (Qwen2Moe, GraniteSwaMoe, Step35)


def choose_encoding(
    spec: ModelSpec,
    source: str = "model",
    ffn_multiple: int = 1,
    weights: Callable[[str], np.ndarray] | None = None,
) -> Encoding:
    """The exact llama.cpp encoding of this model, or a one-line UnsupportedError saying what to do.
    `weights(canonical_name)` gives float tensor values; MoE models need them (is every shared-expert gate
    zero?). Without it every shared-expert gate counts as learned."""
    if spec.rope_scaling and spec.rope_scaling.get("rope_type") != "linear":
        raise UnsupportedError(
            f"GGUF export supports default or linear RoPE, not {spec.rope_scaling.get('rope_type')!r} "
            "(export with --format onnx instead)",
            source,
        )
    windows = {w for w in spec.windows if w is not None}
    if len(windows) > 1:
        raise UnsupportedError(
            f"sliding windows of different sizes {sorted(windows)} have no GGUF encoding", source
        )
    gated: list[int] = []
    candidates = DENSE
    if spec.is_moe:
        moes = [layer.ffn for layer in spec.layers if isinstance(layer.ffn, MoEFFN)]
        if len({(f.num_experts, f.top_k, f.expert_intermediate, f.shared_intermediate) for f in moes}) > 1:
            raise UnsupportedError("GGUF needs the same expert shape in every MoE layer", source)
        gated = _gated_layers(spec, weights)
        candidates = HYBRID if dense_layers(spec) else ALL_MOE
    blocked = []
    for cls in candidates:
        why = cls.blockers(spec, gated)
        if not why:
            enc = cls(spec, ffn_multiple=ffn_multiple)
            enc.describe()
            _note_padding(enc)
            return enc
        blocked.append(f"llama.cpp's {_label(cls)} graph {' and '.join(why)}")
    raise UnsupportedError(_refusal(spec, gated, blocked), source)


def _gated_layers(spec: ModelSpec, weights: Callable[[str], np.ndarray] | None) -> list[int]:
    """MoE layers whose shared-expert gate is learned (any nonzero weight); all of them when unknown."""
    if moe(spec).shared_intermediate == 0:
        return []
    layers = moe_layers(spec)
    if weights is None:
        return layers
    return [i for i in layers if np.any(weights(f"model.layers.{i}.mlp.shared_expert_gate.weight"))]


def _label(cls: type[Encoding]) -> str:
    return f"{cls.arch} with experts" if cls is GraniteSwaMoe else cls.arch


def _refusal(spec: ModelSpec, gated: list[int], blocked: list[str]) -> str:
    f = moe(spec)
    what = []
    if spec.has_sliding:
        what.append(f"sliding-window attention (window {spec.max_window} on layers {sliding_layers(spec)})")
    if f.norm_topk_prob and f.top_k < f.num_experts:
        what.append("norm_topk_prob=true")
    if gated:
        what.append(f"a learned shared-expert gate (layers {gated})")
    if spec.rope_scaling:
        what.append("linear RoPE scaling")
    fix = 'distill with a constant shared-expert gate (student spec shared_gate="constant"), or ' if gated else ""
    return (
        f"a Qwen2-MoE model with {', '.join(what)} has no exact GGUF encoding: {'; '.join(blocked)}; "
        f"{fix}export with --format onnx instead"
    )


def _note_padding(enc: Encoding) -> None:
    s = enc.spec
    widths = [layer.ffn.intermediate for layer in s.layers if isinstance(layer.ffn, DenseFFN)]
    widths += [w for f in (layer.ffn for layer in s.layers) if isinstance(f, MoEFFN)
               for w in (f.expert_intermediate, f.shared_intermediate) if w]  # fmt: skip
    if any(enc.width(w) != w for w in widths):
        enc.notes.append(
            f"FFN widths padded with zeros to multiples of {enc.ffn_multiple} (exact) for block quantization"
        )
