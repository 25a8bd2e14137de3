"""llama.cpp's `qwen2` (dense, full attention) and `qwen2moe` (experts in every layer, sigmoid-gated
shared expert, full attention, top-k never renormalized)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ....model.spec import ModelSpec, MoEFFN
from .. import rewrite
from ..names import gguf_name
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
)


class Qwen2(Encoding):
    """Dense, full attention: tensors map one to one."""

    arch = "qwen2"

    @classmethod
    def blockers(cls, spec: ModelSpec, gated: list[int]) -> list[str]:
        return ["attends over the whole context (no sliding windows)"] if spec.has_sliding else []

    def ffn(self, i: int, get: Getter) -> Iterator[OutTensor]:
        return self.dense_ffn(i, get)


class Qwen2Moe(Encoding):
    """MoE layers one to one (experts stacked 3-D, shared expert and its sigmoid gate). A dense layer of a
    hybrid is rewritten exactly: every routed expert is a copy of the dense SwiGLU (zero-padded to the common
    expert width), the router is all zeros so softmax gives each expert exactly 1/E and whichever k are
    picked sum to k/E, the copies' down projections are scaled by E/k (exact when E/k is a power of two,
    also on quantized block scales; otherwise one float32 rounding and that tensor is stored in f32), and the
    shared expert has all-zero projections so it adds exactly 0 (its gate reads one input channel, so the
    gate stays finite: llama.cpp computes sigmoid as silu(z)/z, which is 0/0 at z = 0)."""

    arch = "qwen2moe"
    tied_output_required = True

    @classmethod
    def blockers(cls, spec: ModelSpec, gated: list[int]) -> list[str]:
        f, out = moe(spec), []
        if spec.has_sliding:
            out.append("attends over the whole context (no sliding windows)")
        if f.norm_topk_prob and f.top_k < f.num_experts:
            out.append("never renormalizes the top-k router weights (this model has norm_topk_prob=true)")
        if f.shared_intermediate == 0:
            out.append("requires a shared expert")
        return out

    def describe(self) -> None:
        dense = dense_layers(self.spec)
        if dense:
            self.notes.append(
                f"dense layers {dense} of this hybrid MoE are written as {moe(self.spec).num_experts} identical "
                "routed experts under an all-zero router plus an all-zero shared expert (exact; llama.cpp's "
                f"qwen2moe graph has experts in every layer): {duplication_cost(self)} than writing each "
                "dense layer once"
            )

    def arch_metadata(self) -> list[tuple[str, Any]]:
        a, f = self.arch, moe(self.spec)
        return [
            (f"{a}.expert_count", f.num_experts),
            (f"{a}.expert_used_count", f.top_k),
            (f"{a}.expert_feed_forward_length", self.width(expert_width(self.spec))),
            (f"{a}.expert_shared_feed_forward_length", self.width(f.shared_intermediate)),
        ]

    def ffn(self, i: int, get: Getter) -> Iterator[OutTensor]:
        s = self.spec
        f = moe(s)
        E, k, I_x, S = f.num_experts, f.top_k, self.width(expert_width(s)), self.width(f.shared_intermediate)
        H = s.hidden_size
        names = {q: gguf_name(p(i, f"mlp.experts.{q}")) for q in ("gate_proj", "up_proj", "down_proj")}
        shexp = {
            q: gguf_name(p(i, f"mlp.shared_expert.{q}.weight")) for q in ("gate_proj", "up_proj", "down_proj")
        }
        if isinstance(s.layers[i].ffn, MoEFFN):
            yield OutTensor(gguf_name(p(i, "mlp.gate.weight")), get(p(i, "mlp.gate.weight")), "router")
            for q in ("gate_proj", "up_proj"):
                yield OutTensor(names[q], rewrite.pad_rows(get(p(i, f"mlp.experts.{q}")), I_x), "matrix")
            down = rewrite.pad_cols(get(p(i, "mlp.experts.down_proj")), I_x)
            yield OutTensor(names["down_proj"], down, "matrix")
            for q in ("gate_proj", "up_proj"):
                w = rewrite.pad_rows(get(p(i, f"mlp.shared_expert.{q}.weight")), S)
                yield OutTensor(shexp[q], w, "matrix")
            w = rewrite.pad_cols(get(p(i, "mlp.shared_expert.down_proj.weight")), S)
            yield OutTensor(shexp["down_proj"], w, "matrix")
            gate = rewrite.to_float(get(p(i, "mlp.shared_expert_gate.weight"))).reshape(H)
            yield OutTensor(gguf_name(p(i, "mlp.shared_expert_gate.weight")), gate, "vector")
            return
        # Dense layer inside the qwen2moe graph (exact rewrite, see the class docstring).
        yield OutTensor(gguf_name(p(i, "mlp.gate.weight")), np.zeros((E, H), np.float32), "router")
        ratio = E / k
        for q in ("gate_proj", "up_proj"):
            w = rewrite.pad_rows(get(p(i, f"mlp.{q}.weight")), I_x)
            yield OutTensor(names[q], rewrite.stack_copies(w, E), "matrix")
        down = rewrite.pad_cols(get(p(i, "mlp.down_proj.weight")), I_x)
        if is_pow2(ratio):
            down = rewrite.scale_pow2(down, ratio)
        else:  # one float32 rounding per weight: exact in the maths, last-bit in the numbers
            down = rewrite.to_float(down) * np.float32(ratio)
            self.notes.append(
                f"layer {i}: dense down projection scaled by E/k = {ratio:g} in float32 (not a power of 2)"
            )
        yield OutTensor(names["down_proj"], rewrite.stack_copies(down, E), "matrix")
        yield OutTensor(shexp["gate_proj"], np.zeros((S, H), np.float32), "matrix")
        yield OutTensor(shexp["up_proj"], np.zeros((S, H), np.float32), "matrix")
        yield OutTensor(shexp["down_proj"], np.zeros((H, S), np.float32), "matrix")
        # The shared expert's output is exactly 0; its gate only has to stay finite: z = one channel of the
        # normalized input (the one with the largest norm weight), so silu(z)/z is a finite number.
        norm = rewrite.to_float(get(p(i, "post_attention_layernorm.weight")))
        gate = np.zeros(H, np.float32)
        gate[int(np.argmax(np.abs(norm)))] = 1.0
        yield OutTensor(gguf_name(p(i, "mlp.shared_expert_gate.weight")), gate, "vector")
