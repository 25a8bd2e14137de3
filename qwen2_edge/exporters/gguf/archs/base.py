"""What every llama.cpp architecture encoding shares: the tensor walk, the common metadata keys, helpers.

A subclass per llama.cpp architecture (one small file each) says what it cannot compute exactly
(`blockers`), which keys it adds (`arch_metadata`) and how each layer's FFN is written (`ffn`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ....model.spec import DenseFFN, ModelSpec, MoEFFN
from .. import rewrite
from ..names import gguf_name
from ..rewrite import Weight

Getter = Callable[[str], Weight]


@dataclass
class OutTensor:
    name: str
    weight: Weight
    role: str  # "vector" (norms, biases, sinks: f32), "matrix", "router" (kept f32), "embed", "output"


@dataclass
class Encoding:
    """One llama.cpp architecture holding one model: metadata keys and tensors, both exact."""

    spec: ModelSpec
    notes: list[str] = field(default_factory=list)
    # FFN widths are rounded up to this multiple with zero rows/columns (exact) so that a width such as
    # 688 still packs into 32-wide quant blocks; 1 for float files.
    ffn_multiple: int = 1

    arch: ClassVar[str]
    # llama.cpp's loader requires output.weight even when the checkpoint ties it (qwen2moe measured:
    # "tensor 'output.weight' not found"; step35 creates it as required); the others reuse token_embd.
    tied_output_required: ClassVar[bool] = False

    @classmethod
    def blockers(cls, spec: ModelSpec, gated: list[int]) -> list[str]:
        """Why this architecture cannot compute `spec` exactly (empty: it can). `gated`: MoE layers whose
        shared-expert gate is learned (not all zero)."""
        return []

    def describe(self) -> None:
        """Append the notes that say how the model is written (called once, after the choice)."""

    def width(self, n: int) -> int:
        m = self.ffn_multiple
        return -(-n // m) * m

    # -- metadata -----------------------------------------------------------------------------------
    def metadata(self) -> list[tuple[str, Any]]:
        """Architecture keys (`{arch}.…`) as (key, value); ints are uint32, floats float32."""
        s, a = self.spec, self.arch
        kv: list[tuple[str, Any]] = [
            (f"{a}.context_length", s.max_position_embeddings),
            (f"{a}.embedding_length", s.hidden_size),
            (f"{a}.block_count", s.num_layers),
            (f"{a}.feed_forward_length", self.feed_forward_length()),
            (f"{a}.attention.head_count", s.num_heads),
            (f"{a}.attention.head_count_kv", s.num_kv_heads),
            (f"{a}.attention.key_length", s.head_dim),
            (f"{a}.attention.value_length", s.head_dim),
            (f"{a}.rope.dimension_count", s.head_dim),
            (f"{a}.rope.freq_base", float(s.rope_theta)),
            (f"{a}.attention.layer_norm_rms_epsilon", float(s.rms_norm_eps)),
        ]
        if s.rope_scaling:  # linear only (choose_encoding refuses the rest)
            kv += [
                (f"{a}.rope.scaling.type", "linear"),
                (f"{a}.rope.scaling.factor", float(s.rope_scaling["factor"])),
            ]
        overrides = dict(self.arch_metadata())
        kv = [(k, overrides.pop(k, v)) for k, v in kv]
        return kv + list(overrides.items())

    def feed_forward_length(self) -> int:
        """`feed_forward_length`: the (padded) dense FFN width, which every dense layer is widened to."""
        dense = dense_widths(self.spec)
        return self.width(max(dense)) if dense else int(self.spec.config.get("intermediate_size", 0))

    def arch_metadata(self) -> list[tuple[str, Any]]:
        """Keys this architecture adds, or common keys it overrides (same key: replaced in place)."""
        return []

    # -- tensors ------------------------------------------------------------------------------------
    def tensors(self, get: Getter) -> Iterator[OutTensor]:
        """Every GGUF tensor, in llama.cpp's converter's file order: the global tensors sorted by name, then
        each block's tensors sorted by name (the Q4_0 benchmark decoded ~3% slower with the tensors in graph
        order). `get(canonical_name)` returns a float array or a QuantizedTensor; one block is materialized
        at a time."""
        s = self.spec
        head = [OutTensor("output_norm.weight", get("model.norm.weight"), "vector")]
        head.append(OutTensor("token_embd.weight", get("model.embed_tokens.weight"), "embed"))
        if not s.tie_word_embeddings:
            head.append(OutTensor("output.weight", get("lm_head.weight"), "output"))
        elif self.tied_output_required:
            head.append(OutTensor("output.weight", get("model.embed_tokens.weight"), "output"))
        yield from sorted(head, key=lambda t: t.name)
        for layer in s.layers:
            block = list(self.attention(layer.index, get))
            block += self.ffn(layer.index, get)
            yield from sorted(block, key=lambda t: t.name)

    def attention(self, i: int, get: Getter) -> Iterator[OutTensor]:
        s = self.spec
        yield from plain(i, get, ("input_layernorm.weight",))
        heads = {"q_proj": s.num_heads, "k_proj": s.num_kv_heads, "v_proj": None}
        for proj, n in heads.items():
            for kind in ("weight", "bias") if s.qkv_bias else ("weight",):
                name = p(i, f"self_attn.{proj}.{kind}")
                w = get(name)
                if n is not None:
                    w = self.qk_rows(w, n)
                yield OutTensor(gguf_name(name), w, "vector" if kind == "bias" else "matrix")
        yield from plain(i, get, ("self_attn.o_proj.weight", "post_attention_layernorm.weight"))

    def qk_rows(self, w: Weight, n_heads: int) -> Weight:
        """q/k projection rows (and biases) as this architecture's RoPE layout wants them."""
        return w

    def ffn(self, i: int, get: Getter) -> Iterator[OutTensor]:
        raise NotImplementedError

    def dense_ffn(self, i: int, get: Getter) -> Iterator[OutTensor]:
        """A plain SwiGLU (ffn_gate / ffn_up / ffn_down), widened to feed_forward_length."""
        width = self.feed_forward_length()
        for proj in ("gate_proj", "up_proj"):
            name = p(i, f"mlp.{proj}.weight")
            yield OutTensor(gguf_name(name), rewrite.pad_rows(get(name), width), "matrix")
        name = p(i, "mlp.down_proj.weight")
        yield OutTensor(gguf_name(name), rewrite.pad_cols(get(name), width), "matrix")


# 2**23 tokens: beyond any context, and small enough that llama.cpp's SWA cache size n_swa * n_seq_max
# (up to 256 sequences) + n_ubatch still fits its uint32 arithmetic.
FULL_WINDOW = 1 << 23


def window_keys(enc: Encoding) -> list[tuple[str, Any]]:
    """sliding_window and its per-layer pattern. llama.cpp's iSWA cache asserts that some layer slides, so
    a model with no window anywhere gets one on layer 0 that no context reaches (masking needs
    i - j >= FULL_WINDOW)."""
    s, a = enc.spec, enc.arch
    if s.has_sliding:
        window, pattern = int(s.max_window), [w is not None for w in s.windows]
    else:
        window, pattern = FULL_WINDOW, [i == 0 for i in range(s.num_layers)]
    return [(f"{a}.attention.sliding_window", window), (f"{a}.attention.sliding_window_pattern", pattern)]


# -- helpers ----------------------------------------------------------------------------------------
def p(i: int, suffix: str) -> str:
    return f"model.layers.{i}.{suffix}"


def plain(i: int, get: Getter, suffixes) -> Iterator[OutTensor]:
    for suf in suffixes:
        w = get(p(i, suf))
        yield OutTensor(gguf_name(p(i, suf)), w, "vector" if len(w.shape) == 1 else "matrix")


def moe(s: ModelSpec) -> MoEFFN:
    return next(layer.ffn for layer in s.layers if isinstance(layer.ffn, MoEFFN))


def dense_layers(s: ModelSpec) -> list[int]:
    return [layer.index for layer in s.layers if isinstance(layer.ffn, DenseFFN)]


def moe_layers(s: ModelSpec) -> list[int]:
    return [layer.index for layer in s.layers if isinstance(layer.ffn, MoEFFN)]


def dense_widths(s: ModelSpec) -> list[int]:
    return [layer.ffn.intermediate for layer in s.layers if isinstance(layer.ffn, DenseFFN)]


def sliding_layers(s: ModelSpec) -> list[int]:
    return [i for i, w in enumerate(s.windows) if w is not None]


def is_pow2(x: float) -> bool:
    return bool(np.frexp(x)[0] == 0.5)


def expert_width(s: ModelSpec) -> int:
    """Common routed-expert width of the encodings with experts in every layer: the experts' own, widened
    to hold any dense layer's FFN."""
    return max([moe(s).expert_intermediate, *dense_widths(s)])


def duplication_cost(enc: Encoding) -> str:
    """What writing each dense layer as E expert copies (and widening every expert to the dense width)
    costs, against writing each dense layer once: weights stored, and weights read per decode step."""
    s, f = enc.spec, moe(enc.spec)
    H, E, k = s.hidden_size, f.num_experts, f.top_k
    I_x, I_e = enc.width(expert_width(s)), enc.width(f.expert_intermediate)
    stored = read = 0
    for layer in s.layers:
        if isinstance(layer.ffn, DenseFFN):
            own = 3 * H * enc.width(layer.ffn.intermediate)
            stored += E * 3 * H * I_x - own
            read += k * 3 * H * I_x - own
        else:
            stored += E * 3 * H * (I_x - I_e)
            read += k * 3 * H * (I_x - I_e)
    return f"{stored / 1e6:.3g} M more weights stored and {read / 1e6:.3g} M more read per decode step"
