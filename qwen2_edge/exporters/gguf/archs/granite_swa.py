"""llama.cpp's `granite_swa`: per-layer sliding windows, with or without experts.

Dense (`GraniteSwa`): llama.cpp's qwen2 graph attends over the whole context, but its granite_swa graph
has per-layer sliding windows (same "i - w < j <= i" window), q/k/v biases, RMSNorm and SwiGLU. Its extra
knobs are set to identities: logit scale 1, no residual / embedding / attention multipliers, attention
sinks at -1e30 (exp underflows to exactly 0), and its "normal" RoPE is matched by permuting q/k rows
(rewrite.neox_to_norm_perm).

With experts (`GraniteSwaMoe`): granite_swa's MoE branch (llama-graph.cpp build_moe_ffn, called with
norm_w=true and expert_weights_scale left at 0 = unscaled) routes by softmax, takes the top k and always
renormalizes their weights, and adds a shared expert (gate and up fused in `ffn_up_shexp`, silu on the
first half) WITHOUT Qwen2-MoE's sigmoid gate. So it computes our model exactly when (a) norm_topk_prob is
true or top_k == num_experts (renormalizing a full softmax is the identity) and (b) every
shared_expert_gate weight is zero: sigmoid(0) = 1/2 is then a constant, folded into the shared down
projection (a power of two: exact, also on quantized block scales). With n_expert > 0 every granite_swa
layer is a MoE layer, so dense layers of a hybrid become E copies of the dense SwiGLU under an all-zero
router (uniform softmax; the k picked weigh 1/k each after renormalization, which is exact for k a power of
two, so other k are refused) and an all-zero shared expert.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ....model.spec import ModelSpec, MoEFFN
from .. import rewrite
from ..names import ATTN_SINKS, block_name, gguf_name
from .base import (
    Encoding,
    Getter,
    OutTensor,
    dense_layers,
    duplication_cost,
    expert_width,
    is_pow2,
    moe,
    p,
    sliding_layers,
    window_keys,
)

SINK_OFF = -1.0e30  # softmax sink logit whose exp() is exactly 0 next to any real score
class GraniteSwa(Encoding):
    arch = "granite_swa"

    def describe(self) -> None:
        self.notes.append(
            f"sliding window {self.spec.max_window} on layers {sliding_layers(self.spec)}: written as llama.cpp "
            "architecture granite_swa (per-layer sliding windows; identity multipliers, -1e30 attention sinks, "
            "q/k rows permuted for its RoPE layout) because llama.cpp's qwen2 graph ignores sliding windows"
        )

    def arch_metadata(self) -> list[tuple[str, Any]]:
        return [*window_keys(self), (f"{self.arch}.logit_scale", 1.0)]

    def qk_rows(self, w, n_heads: int):
        return rewrite.permute_rows(w, rewrite.neox_to_norm_perm(n_heads, self.spec.head_dim))

    def attention(self, i: int, get: Getter) -> Iterator[OutTensor]:
        yield from super().attention(i, get)
        sinks = np.full(self.spec.num_heads, SINK_OFF, np.float32)
        yield OutTensor(block_name(i, ATTN_SINKS), sinks, "vector")

    def ffn(self, i: int, get: Getter) -> Iterator[OutTensor]:
        return self.dense_ffn(i, get)


class GraniteSwaMoe(GraniteSwa):
    """Qwen2-MoE as granite_swa with experts (module docstring)."""

    @classmethod
    def blockers(cls, spec: ModelSpec, gated: list[int]) -> list[str]:
        f, out = moe(spec), []
        if not f.norm_topk_prob and f.top_k < f.num_experts:
            out.append("always renormalizes the top-k router weights (this model has norm_topk_prob=false)")
        if gated:
            out.append(f"adds the shared expert without a sigmoid gate (layers {gated} have a learned one)")
        if dense_layers(spec) and not is_pow2(f.top_k):
            out.append(f"would weigh the dense layers' expert copies 1/top_k, not exact for top_k={f.top_k}")
        return out

    def describe(self) -> None:
        s, f = self.spec, moe(self.spec)
        swa = sliding_layers(s)
        self.notes.append(
            "Qwen2-MoE written as llama.cpp architecture granite_swa with experts: "
            + (f"sliding window {s.max_window} on layers {swa}, " if swa else "no sliding layers, ")
            + "softmax router with renormalized top-k"
            + (
                ", shared expert's constant gate sigmoid(0) = 1/2 folded into its down projection"
                if f.shared_intermediate
                else ""
            )
            + " (exact; identity multipliers, -1e30 attention sinks, q/k rows permuted for its RoPE layout)"
        )
        dense = dense_layers(s)
        if dense:
            self.notes.append(
                f"dense layers {dense} of this hybrid MoE are written as {f.num_experts} identical routed "
                f"experts under an all-zero router (renormalized weights 1/{f.top_k} each) plus an all-zero "
                f"shared expert (exact; with experts every granite_swa layer is a MoE layer): "
                f"{duplication_cost(self)} than writing each dense layer once"
            )

    def feed_forward_length(self) -> int:
        return self.width(expert_width(self.spec))  # granite's experts are n_ff wide

    def arch_metadata(self) -> list[tuple[str, Any]]:
        a, f = self.arch, moe(self.spec)
        kv = [(f"{a}.expert_count", f.num_experts), (f"{a}.expert_used_count", f.top_k)]
        if f.shared_intermediate:
            kv.append((f"{a}.expert_shared_feed_forward_length", self.width(f.shared_intermediate)))
        return kv + super().arch_metadata()

    def ffn(self, i: int, get: Getter) -> Iterator[OutTensor]:
        """One granite_swa MoE layer: router, stacked experts, ungated shared expert (module docstring)."""
        s = self.spec
        f = moe(s)
        E, I_x, H = f.num_experts, self.width(expert_width(s)), s.hidden_size
        S = self.width(f.shared_intermediate) if f.shared_intermediate else 0
        names = {q: gguf_name(p(i, f"mlp.experts.{q}")) for q in ("gate_proj", "up_proj", "down_proj")}
        up_shexp = gguf_name(p(i, "mlp.shared_expert.up_proj.weight"))  # holds gate and up, fused
        down_shexp = gguf_name(p(i, "mlp.shared_expert.down_proj.weight"))
        if isinstance(s.layers[i].ffn, MoEFFN):
            yield OutTensor(gguf_name(p(i, "mlp.gate.weight")), get(p(i, "mlp.gate.weight")), "router")
            for q in ("gate_proj", "up_proj"):
                yield OutTensor(names[q], rewrite.pad_rows(get(p(i, f"mlp.experts.{q}")), I_x), "matrix")
            down = rewrite.pad_cols(get(p(i, "mlp.experts.down_proj")), I_x)
            yield OutTensor(names["down_proj"], down, "matrix")
            if S:
                # llama.cpp's swiglu on the fused tensor: silu(first half) * second half -> [gate; up].
                gate, up = (
                    rewrite.pad_rows(get(p(i, f"mlp.shared_expert.{q}.weight")), S)
                    for q in ("gate_proj", "up_proj")
                )
                yield OutTensor(up_shexp, rewrite.concat_rows(gate, up), "matrix")
                # sigmoid(0) = 1/2: the zero gate (checked by choose_encoding) as an exact power-of-two scale.
                down = rewrite.pad_cols(get(p(i, "mlp.shared_expert.down_proj.weight")), S)
                yield OutTensor(down_shexp, rewrite.scale_pow2(down, 0.5), "matrix")
            return
        # Dense layer: all-zero router -> uniform softmax; the k picked weigh (1/E) / (k/E) = 1/k each after
        # renormalization (exact: k is a power of two), so k identical copies sum to the dense FFN.
        yield OutTensor(gguf_name(p(i, "mlp.gate.weight")), np.zeros((E, H), np.float32), "router")
        for q in ("gate_proj", "up_proj"):
            w = rewrite.pad_rows(get(p(i, f"mlp.{q}.weight")), I_x)
            yield OutTensor(names[q], rewrite.stack_copies(w, E), "matrix")
        down = rewrite.pad_cols(get(p(i, "mlp.down_proj.weight")), I_x)
        yield OutTensor(names["down_proj"], rewrite.stack_copies(down, E), "matrix")
        if S:  # a shared expert of zeros adds exactly 0 (silu(0) * 0)
            yield OutTensor(up_shexp, np.zeros((2 * S, H), np.float32), "matrix")
            yield OutTensor(down_shexp, np.zeros((H, S), np.float32), "matrix")
