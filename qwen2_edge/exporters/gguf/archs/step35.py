"""llama.cpp's `step35`: per-layer dense or MoE FFN, sliding windows, so a hybrid's dense layer is written once.

What the pinned llama.cpp computes (src/models/step35.cpp, llama-graph.cpp build_moe_ffn), and how a
Qwen2-MoE hybrid maps onto it exactly:
- Every FFN tensor is optional. A layer without `ffn_gate_inp` runs a plain SwiGLU on ffn_gate / ffn_up /
  ffn_down, all `feed_forward_length` wide (llama.cpp reads the width of layer 0 for every layer, so dense
  layers are zero-padded to the widest one: exact). A layer with it runs build_moe_ffn with
  `expert_gating_func` = softmax (written: the default is sigmoid), `expert_weights_norm` = norm_topk_prob
  (renormalize the top-k weights or not), no weight scale, no selection bias, experts
  `expert_feed_forward_length` wide, then ALWAYS adds a shared expert (ffn_*_shexp) with no gate. So a
  Qwen2-MoE shared expert is exact only when its sigmoid gate is constant: every shared_expert_gate weight
  zero (a student distilled with shared_gate="constant"), sigmoid(0) = 1/2 folded into the shared down
  projection (a power of two: exact, also on quantized block scales). A model without a shared expert gets
  an all-zero one, one channel wide: silu(0) * 0 = 0 adds exactly 0.
- Attention: q/k/v biases, NeoX RoPE (rotate-half, as Qwen2: no row permutation), iSWA cache with the
  per-layer `sliding_window_pattern` and one `sliding_window` (the same "i - w < j <= i" rule). Sliding
  layers take `rope.freq_base_swa` (default 10000: written = rope_theta) and a frequency scale of 1 that
  no key sets, so a model with linear RoPE scaling is not exact here (and one layer must slide, see
  base.window_keys).
- load_arch_hparams halves `rope.dimension_count` ("full_attention layer only use half of the RoPE
  dimensions") after the sliding layers' count was taken from it, so 2 x head_dim is written with
  `rope.dimension_count_swa` = head_dim: both kinds of layer rotate all head_dim dimensions.
- The loader requires output.weight, so tied embeddings are written twice (stored, not read twice: a
  decode step reads one embedding row). No MTP layers (nextn_predict_layers absent = 0).
"""

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
    moe,
    moe_layers,
    p,
    sliding_layers,
    window_keys,
)

GATING_SOFTMAX = 1  # llama_expert_gating_func_type LLAMA_EXPERT_GATING_FUNC_TYPE_SOFTMAX
ZERO_SHARED_WIDTH = 1  # the all-zero shared expert of a model that has none


class Step35(Encoding):
    arch = "step35"
    tied_output_required = True

    @classmethod
    def blockers(cls, spec: ModelSpec, gated: list[int]) -> list[str]:
        out = []
        if gated:
            out.append(f"adds the shared expert without a sigmoid gate (layers {gated} have a learned one)")
        if spec.rope_scaling:
            out.append("applies no RoPE scaling on its sliding layers (and needs one)")
        return out

    @property
    def shared_width(self) -> int:
        S = moe(self.spec).shared_intermediate
        return self.width(S) if S else ZERO_SHARED_WIDTH

    def describe(self) -> None:
        s, f = self.spec, moe(self.spec)
        swa, dense = sliding_layers(s), dense_layers(s)
        self.notes.append(
            "Qwen2-MoE written as llama.cpp architecture step35: "
            + (f"dense layers {dense} as plain SwiGLU (each written once), " if dense else "")
            + f"MoE layers {moe_layers(s)} with softmax router, top-{f.top_k} "
            + ("renormalized" if f.norm_topk_prob else "not renormalized")
            + (
                ", shared expert's constant gate sigmoid(0) = 1/2 folded into its down projection"
                if f.shared_intermediate
                else ", an all-zero 1-wide shared expert (step35 always adds one)"
            )
            + (f", sliding window {s.max_window} on layers {swa}" if swa else ", no sliding layers")
            + " (exact; rope.dimension_count = 2 x head_dim because step35 halves it on full-attention layers)"
        )
        if s.tie_word_embeddings:
            self.notes.append("tied embeddings: output.weight is a copy of token_embd (step35's loader needs it)")

    def arch_metadata(self) -> list[tuple[str, Any]]:
        a, s, f = self.arch, self.spec, moe(self.spec)
        return [
            (f"{a}.rope.dimension_count", 2 * s.head_dim),
            (f"{a}.rope.dimension_count_swa", s.head_dim),
            (f"{a}.rope.freq_base_swa", float(s.rope_theta)),
            (f"{a}.expert_count", f.num_experts),
            (f"{a}.expert_used_count", f.top_k),
            (f"{a}.expert_feed_forward_length", self.width(f.expert_intermediate)),
            (f"{a}.expert_shared_feed_forward_length", self.shared_width),
            (f"{a}.expert_gating_func", GATING_SOFTMAX),
            (f"{a}.expert_weights_norm", bool(f.norm_topk_prob)),
            *window_keys(self),
        ]

    def ffn(self, i: int, get: Getter) -> Iterator[OutTensor]:
        s = self.spec
        if not isinstance(s.layers[i].ffn, MoEFFN):
            yield from self.dense_ffn(i, get)
            return
        f = moe(s)
        I_e, S, H = self.width(f.expert_intermediate), self.shared_width, s.hidden_size
        yield OutTensor(gguf_name(p(i, "mlp.gate.weight")), get(p(i, "mlp.gate.weight")), "router")
        for q in ("gate_proj", "up_proj"):
            name = p(i, f"mlp.experts.{q}")
            yield OutTensor(gguf_name(name), rewrite.pad_rows(get(name), I_e), "matrix")
        name = p(i, "mlp.experts.down_proj")
        yield OutTensor(gguf_name(name), rewrite.pad_cols(get(name), I_e), "matrix")
        shexp = {q: p(i, f"mlp.shared_expert.{q}.weight") for q in ("gate_proj", "up_proj", "down_proj")}
        if not f.shared_intermediate:
            yield OutTensor(gguf_name(shexp["gate_proj"]), np.zeros((S, H), np.float32), "matrix")
            yield OutTensor(gguf_name(shexp["up_proj"]), np.zeros((S, H), np.float32), "matrix")
            yield OutTensor(gguf_name(shexp["down_proj"]), np.zeros((H, S), np.float32), "matrix")
            return
        for q in ("gate_proj", "up_proj"):
            yield OutTensor(gguf_name(shexp[q]), rewrite.pad_rows(get(shexp[q]), S), "matrix")
        # sigmoid(0) = 1/2: the zero gate (blockers() checked it) as an exact power-of-two scale.
        down = rewrite.scale_pow2(rewrite.pad_cols(get(shexp["down_proj"]), S), 0.5)
        yield OutTensor(gguf_name(shexp["down_proj"]), down, "matrix")
