"""How a Qwen2 / Qwen2-MoE checkpoint is expressed in a llama.cpp architecture, exactly or not at all.

Four encodings, chosen from the spec and, for some MoE models, the shared-expert gate values (see the
README section "GGUF: hybrid MoE and sliding windows"):

- `qwen2`: dense, full attention everywhere. Tensors map one to one.
- `qwen2moe`: MoE layers one to one (experts stacked 3-D, shared expert and its sigmoid gate). A dense
  layer of a hybrid (`mlp_only_layers`, `decoder_sparse_step`) is rewritten exactly: every routed expert is
  a copy of the dense SwiGLU (zero-padded to the common expert width), the router is all zeros so
  softmax gives each expert exactly 1/E and whichever k are picked sum to k/E, the copies' down
  projections are scaled by E/k (exact when E/k is a power of two, also on quantized block scales;
  otherwise one float32 rounding and that tensor is stored in f32), and the shared expert has all-zero
  projections so it adds exactly 0 (its gate reads one input channel, so the gate stays finite:
  llama.cpp computes sigmoid as silu(z)/z, which is 0/0 at z = 0).
- `granite_swa`: dense with sliding-window layers. llama.cpp's qwen2 graph attends over the whole
  context, but its granite_swa graph has per-layer sliding windows (same "i - w < j <= i" window), q/k/v
  biases, RMSNorm and SwiGLU. Its extra knobs are set to identities: logit scale 1, no residual /
  embedding / attention multipliers, attention sinks at -1e30 (exp underflows to exactly 0), and its
  "normal" RoPE is matched by permuting q/k rows (rewrite.neox_to_norm_perm).

- `granite_swa` with experts: a Qwen2-MoE model that llama.cpp's qwen2moe graph cannot run exactly
  (sliding windows, or norm_topk_prob=true, or no shared expert). granite_swa's MoE branch (llama-graph.cpp
  build_moe_ffn, called with norm_w=true and expert_weights_scale left at 0 = unscaled) routes by softmax,
  takes the top k and always renormalizes their weights, and adds a shared expert (gate and up fused in
  `ffn_up_shexp`, silu on the first half) WITHOUT Qwen2-MoE's sigmoid gate. So it computes our model
  exactly when (a) norm_topk_prob is true or top_k == num_experts (renormalizing a full softmax is the
  identity) and (b) every shared_expert_gate weight is zero: sigmoid(0) = 1/2 is then a constant, folded
  into the shared down projection (a power of two: exact, also on quantized block scales). With n_expert > 0
  every granite_swa layer is a MoE layer, so dense layers of a hybrid become E copies of the dense SwiGLU
  under an all-zero router (uniform softmax; the k picked weigh 1/k each after renormalization, which is
  exact for k a power of two, so other k are refused) and an all-zero shared expert. The decision needs the
  gate values, hence `choose_encoding(..., weights=...)`.

Everything else (a learned shared-expert gate with windows or renormalized top-k, windows of different
sizes) has no exact encoding in the pinned llama.cpp and is refused with a one-line error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import UnsupportedError
from ...model.spec import DenseFFN, ModelSpec, MoEFFN
from . import rewrite
from .names import ATTN_SINKS, block_name, gguf_name
from .rewrite import Weight

SINK_OFF = -1.0e30  # softmax sink logit whose exp() is exactly 0 next to any real score
# 2**23 tokens: beyond any context, and small enough that llama.cpp's SWA cache size n_swa * n_seq_max
# (up to 256 sequences) + n_ubatch still fits its uint32 arithmetic.
FULL_WINDOW = 1 << 23


@dataclass
class OutTensor:
    name: str
    weight: Weight
    role: str  # "vector" (norms, biases, sinks: f32), "matrix", "router" (kept f32), "embed", "output"


@dataclass
class Encoding:
    arch: str
    spec: ModelSpec
    notes: list[str] = field(default_factory=list)
    # FFN widths are rounded up to this multiple with zero rows/columns (exact) so that a width such as
    # 688 still packs into 32-wide quant blocks; 1 for float files.
    ffn_multiple: int = 1

    def width(self, n: int) -> int:
        m = self.ffn_multiple
        return -(-n // m) * m

    @property
    def norm_rope(self) -> bool:
        return self.arch == "granite_swa"

    @property
    def granite_moe(self) -> bool:
        return self.arch == "granite_swa" and self.spec.is_moe


def choose_encoding(
    spec: ModelSpec,
    source: str = "model",
    ffn_multiple: int = 1,
    weights: Callable[[str], np.ndarray] | None = None,
) -> Encoding:
    """`weights(canonical_name)` gives float tensor values; only Qwen2-MoE models that llama.cpp's qwen2moe
    graph cannot run need them (is every shared-expert gate zero?). Without it such models are refused."""
    enc = _choose(spec, source, weights)
    enc.ffn_multiple = ffn_multiple
    widths = [layer.ffn.intermediate for layer in spec.layers if isinstance(layer.ffn, DenseFFN)]
    widths += [w for f in (layer.ffn for layer in spec.layers) if isinstance(f, MoEFFN)
               for w in (f.expert_intermediate, f.shared_intermediate)]  # fmt: skip
    if any(enc.width(w) != w for w in widths):
        enc.notes.append(
            f"FFN widths padded with zeros to multiples of {ffn_multiple} (exact) for block quantization"
        )
    return enc


def _choose(spec: ModelSpec, source: str, weights: Callable[[str], np.ndarray] | None = None) -> Encoding:
    """The exact llama.cpp encoding of this model, or a one-line UnsupportedError saying what to do."""
    if spec.rope_scaling and spec.rope_scaling.get("rope_type") != "linear":
        raise UnsupportedError(
            f"GGUF export supports default or linear RoPE, not {spec.rope_scaling.get('rope_type')!r} "
            "(export with --format onnx instead)",
            source,
        )
    if spec.is_moe:
        moes = [layer.ffn for layer in spec.layers if isinstance(layer.ffn, MoEFFN)]
        if len({(f.num_experts, f.top_k, f.expert_intermediate, f.shared_intermediate) for f in moes}) > 1:
            raise UnsupportedError("GGUF needs the same expert shape in every MoE layer", source)
        f = moes[0]
        _check_one_window(spec, source)
        renorm = f.norm_topk_prob and f.top_k < f.num_experts
        if not spec.has_sliding and not renorm and f.shared_intermediate > 0:
            return _qwen2moe(spec, f)
        return _granite_moe(spec, f, source, weights)
    if spec.has_sliding:
        windows = {w for w in spec.windows if w is not None}
        if len(windows) > 1:
            raise UnsupportedError(
                f"sliding windows of different sizes {sorted(windows)} have no GGUF encoding", source
            )
        swa = [i for i, w in enumerate(spec.windows) if w is not None]
        enc = Encoding("granite_swa", spec)
        enc.notes.append(
            f"sliding window {spec.max_window} on layers {swa}: written as llama.cpp architecture granite_swa "
            "(per-layer sliding windows; identity multipliers, -1e30 attention sinks, q/k rows permuted for "
            "its RoPE layout) because llama.cpp's qwen2 graph ignores sliding windows"
        )
        return enc
    return Encoding("qwen2", spec)


def _qwen2moe(spec: ModelSpec, f: MoEFFN) -> Encoding:
    enc = Encoding("qwen2moe", spec)
    dense = [layer.index for layer in spec.layers if isinstance(layer.ffn, DenseFFN)]
    if dense:
        enc.notes.append(
            f"dense layers {dense} of this hybrid MoE are written as {f.num_experts} identical routed experts "
            "under an all-zero router plus an all-zero shared expert (exact; llama.cpp's qwen2moe graph has "
            "experts in every layer)"
        )
    return enc


def _granite_moe(
    spec: ModelSpec, f: MoEFFN, source: str, weights: Callable[[str], np.ndarray] | None
) -> Encoding:
    """Qwen2-MoE as granite_swa with experts (module docstring), or the refusal naming what blocks it."""
    if spec.has_sliding:
        swa = [i for i, w in enumerate(spec.windows) if w is not None]
        what = (
            f"sliding-window attention (window {spec.max_window} on layers {swa}) in a Qwen2-MoE model has no "
            "exact GGUF encoding: llama.cpp's qwen2moe graph attends over the full context"
        )
    elif f.shared_intermediate == 0:
        what = (
            "a Qwen2-MoE model without a shared expert has no exact GGUF encoding: llama.cpp's qwen2moe "
            "graph requires the shared expert"
        )
    else:
        what = (
            "norm_topk_prob=true has no exact GGUF encoding: llama.cpp's qwen2moe graph never renormalizes "
            "the top-k router weights"
        )
    blockers, fixes = [], []
    if not f.norm_topk_prob and f.top_k < f.num_experts:
        blockers.append("always renormalizes the top-k router weights (this model has norm_topk_prob=false)")
        fixes.append("norm_topk_prob=true")
    moe_layers = [layer.index for layer in spec.layers if isinstance(layer.ffn, MoEFFN)]
    if f.shared_intermediate > 0:
        if weights is None:
            gated = moe_layers  # unknown values: assume learned
        else:
            gated = [
                i for i in moe_layers if np.any(weights(f"model.layers.{i}.mlp.shared_expert_gate.weight"))
            ]
        if gated:
            blockers.append(
                f"adds the shared expert without a sigmoid gate (exact only when every shared_expert_gate is "
                f"zero; layers {gated} have a learned one)"
            )
            fixes.append('a constant shared-expert gate (student spec shared_gate="constant")')
    dense = [layer.index for layer in spec.layers if isinstance(layer.ffn, DenseFFN)]
    if dense and np.frexp(f.top_k)[0] != 0.5:
        blockers.append(f"would weigh the dense layers' expert copies 1/top_k, not exact for top_k={f.top_k}")
        fixes.append("top_k a power of two")
    if blockers:
        raise UnsupportedError(
            f"{what}, and its granite_swa graph (sliding windows, experts) {'; '.join(blockers)}; distill "
            f"with {' and '.join(fixes)}, or export with --format onnx instead",
            source,
        )
    enc = Encoding("granite_swa", spec)
    swa = [i for i, w in enumerate(spec.windows) if w is not None]
    enc.notes.append(
        "Qwen2-MoE written as llama.cpp architecture granite_swa with experts: "
        + (f"sliding window {spec.max_window} on layers {swa}, " if swa else "no sliding layers, ")
        + "softmax router with renormalized top-k"
        + (
            ", shared expert's constant gate sigmoid(0) = 1/2 folded into its down projection"
            if f.shared_intermediate
            else ""
        )
        + " (exact; identity multipliers, -1e30 attention sinks, q/k rows permuted for its RoPE layout)"
    )
    if dense:
        enc.notes.append(
            f"dense layers {dense} of this hybrid MoE are written as {f.num_experts} identical routed experts "
            f"under an all-zero router (renormalized weights 1/{f.top_k} each) plus an all-zero shared expert "
            "(exact; with experts every granite_swa layer is a MoE layer)"
        )
    return enc


def _check_one_window(spec: ModelSpec, source: str) -> None:
    windows = {w for w in spec.windows if w is not None}
    if len(windows) > 1:
        raise UnsupportedError(
            f"sliding windows of different sizes {sorted(windows)} have no GGUF encoding", source
        )


# -- metadata ---------------------------------------------------------------------------------------
def metadata(enc: Encoding) -> list[tuple[str, Any]]:
    """Architecture keys (`{arch}.…`) as (key, value); ints are uint32, floats float32."""
    s, a = enc.spec, enc.arch
    dense_ff = [layer.ffn.intermediate for layer in s.layers if isinstance(layer.ffn, DenseFFN)]
    kv: list[tuple[str, Any]] = [
        (f"{a}.context_length", s.max_position_embeddings),
        (f"{a}.embedding_length", s.hidden_size),
        (f"{a}.block_count", s.num_layers),
        (
            f"{a}.feed_forward_length",
            enc.width(max(dense_ff)) if dense_ff else int(s.config.get("intermediate_size", 0)),
        )
        if not enc.granite_moe
        else (f"{a}.feed_forward_length", enc.width(expert_width(s))),  # granite's experts are n_ff wide
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
    if a == "qwen2moe":
        f = _moe(s)
        kv += [
            (f"{a}.expert_count", f.num_experts),
            (f"{a}.expert_used_count", f.top_k),
            (f"{a}.expert_feed_forward_length", enc.width(expert_width(s))),
            (f"{a}.expert_shared_feed_forward_length", enc.width(f.shared_intermediate)),
        ]
    if enc.granite_moe:
        f = _moe(s)
        kv += [(f"{a}.expert_count", f.num_experts), (f"{a}.expert_used_count", f.top_k)]
        if f.shared_intermediate:
            kv.append((f"{a}.expert_shared_feed_forward_length", enc.width(f.shared_intermediate)))
    if a == "granite_swa":
        if s.has_sliding:
            window, pattern = int(s.max_window), [w is not None for w in s.windows]
        else:
            # A MoE model here for its renormalized top-k, no window anywhere: llama.cpp's iSWA cache asserts
            # that some layer slides, so layer 0 gets a window no context reaches (masking needs
            # i - j >= FULL_WINDOW).
            window, pattern = FULL_WINDOW, [i == 0 for i in range(s.num_layers)]
        kv += [
            (f"{a}.attention.sliding_window", window),
            (f"{a}.attention.sliding_window_pattern", pattern),
            (f"{a}.logit_scale", 1.0),
        ]
    return kv


def _moe(s: ModelSpec) -> MoEFFN:
    return next(layer.ffn for layer in s.layers if isinstance(layer.ffn, MoEFFN))


def expert_width(s: ModelSpec) -> int:
    """Common routed-expert width: the experts' own, widened to hold any dense layer's FFN."""
    widths = [_moe(s).expert_intermediate]
    widths += [layer.ffn.intermediate for layer in s.layers if isinstance(layer.ffn, DenseFFN)]
    return max(widths)


# -- tensors ----------------------------------------------------------------------------------------
def tensors(enc: Encoding, get: Callable[[str], Weight]) -> Iterator[OutTensor]:
    """Every GGUF tensor, in llama.cpp's converter's file order: the global tensors sorted by name, then
    each block's tensors sorted by name (the Q4_0 benchmark decoded ~3% slower with the tensors in graph
    order; same types and bytes otherwise). `get(canonical_name)` returns float32 numpy or a
    QuantizedTensor; one block is materialized at a time."""
    s = enc.spec
    head = [OutTensor("output_norm.weight", get("model.norm.weight"), "vector")]
    head.append(OutTensor("token_embd.weight", get("model.embed_tokens.weight"), "embed"))
    # llama.cpp's qwen2moe loader requires output.weight even when the checkpoint ties it (measured:
    # "tensor 'output.weight' not found"), so it is written there; the qwen2 and granite_swa loaders reuse
    # token_embd when it is absent, as llama.cpp's own converter relies on (and the file stays smaller).
    if not s.tie_word_embeddings:
        head.append(OutTensor("output.weight", get("lm_head.weight"), "output"))
    elif enc.arch == "qwen2moe":
        head.append(OutTensor("output.weight", get("model.embed_tokens.weight"), "output"))
    yield from sorted(head, key=lambda t: t.name)
    if enc.arch == "qwen2moe":
        ffn = _moe_ffn
    elif enc.granite_moe:
        ffn = _granite_moe_ffn
    else:
        ffn = _dense_ffn
    for layer in s.layers:
        block = list(_attention(enc, layer.index, get))
        block += ffn(enc, layer.index, get)
        yield from sorted(block, key=lambda t: t.name)


def _p(i: int, suffix: str) -> str:
    return f"model.layers.{i}.{suffix}"


def _plain(i: int, get, suffixes) -> Iterator[OutTensor]:
    for suf in suffixes:
        w = get(_p(i, suf))
        yield OutTensor(gguf_name(_p(i, suf)), w, "vector" if len(w.shape) == 1 else "matrix")


def _dense_ffn(enc: Encoding, i: int, get) -> Iterator[OutTensor]:
    I_w = enc.width(enc.spec.layers[i].ffn.intermediate)
    for p in ("gate_proj", "up_proj"):
        name = _p(i, f"mlp.{p}.weight")
        yield OutTensor(gguf_name(name), rewrite.pad_rows(get(name), I_w), "matrix")
    name = _p(i, "mlp.down_proj.weight")
    yield OutTensor(gguf_name(name), rewrite.pad_cols(get(name), I_w), "matrix")


def _attention(enc: Encoding, i: int, get) -> Iterator[OutTensor]:
    s = enc.spec
    yield from _plain(i, get, ("input_layernorm.weight",))
    heads = {"q_proj": s.num_heads, "k_proj": s.num_kv_heads, "v_proj": None}
    for proj, n in heads.items():
        for kind in ("weight", "bias") if s.qkv_bias else ("weight",):
            name = _p(i, f"self_attn.{proj}.{kind}")
            w = get(name)
            if enc.norm_rope and n is not None:
                w = rewrite.permute_rows(w, rewrite.neox_to_norm_perm(n, s.head_dim))
            yield OutTensor(gguf_name(name), w, "vector" if kind == "bias" else "matrix")
    yield from _plain(i, get, ("self_attn.o_proj.weight", "post_attention_layernorm.weight"))
    if enc.arch == "granite_swa":
        yield OutTensor(block_name(i, ATTN_SINKS), np.full(s.num_heads, SINK_OFF, np.float32), "vector")


def _moe_ffn(enc: Encoding, i: int, get) -> Iterator[OutTensor]:
    s = enc.spec
    f = _moe(s)
    E, k, I_x, S = f.num_experts, f.top_k, enc.width(expert_width(s)), enc.width(f.shared_intermediate)
    H = s.hidden_size
    names = {p: gguf_name(_p(i, f"mlp.experts.{p}")) for p in ("gate_proj", "up_proj", "down_proj")}
    shexp = {
        p: gguf_name(_p(i, f"mlp.shared_expert.{p}.weight")) for p in ("gate_proj", "up_proj", "down_proj")
    }
    if isinstance(s.layers[i].ffn, MoEFFN):
        yield OutTensor(gguf_name(_p(i, "mlp.gate.weight")), get(_p(i, "mlp.gate.weight")), "router")
        yield OutTensor(
            names["gate_proj"], rewrite.pad_rows(get(_p(i, "mlp.experts.gate_proj")), I_x), "matrix"
        )
        yield OutTensor(names["up_proj"], rewrite.pad_rows(get(_p(i, "mlp.experts.up_proj")), I_x), "matrix")
        yield OutTensor(
            names["down_proj"], rewrite.pad_cols(get(_p(i, "mlp.experts.down_proj")), I_x), "matrix"
        )
        for p in ("gate_proj", "up_proj"):
            w = rewrite.pad_rows(get(_p(i, f"mlp.shared_expert.{p}.weight")), S)
            yield OutTensor(shexp[p], w, "matrix")
        w = rewrite.pad_cols(get(_p(i, "mlp.shared_expert.down_proj.weight")), S)
        yield OutTensor(shexp["down_proj"], w, "matrix")
        gate = rewrite.to_float(get(_p(i, "mlp.shared_expert_gate.weight"))).reshape(H)
        yield OutTensor(gguf_name(_p(i, "mlp.shared_expert_gate.weight")), gate, "vector")
        return
    # Dense layer inside the qwen2moe graph (exact rewrite, see module docstring).
    yield OutTensor(gguf_name(_p(i, "mlp.gate.weight")), np.zeros((E, H), np.float32), "router")
    ratio = E / k
    for p in ("gate_proj", "up_proj"):
        w = rewrite.pad_rows(get(_p(i, f"mlp.{p}.weight")), I_x)
        yield OutTensor(names[p], rewrite.stack_copies(w, E), "matrix")
    down = rewrite.pad_cols(get(_p(i, "mlp.down_proj.weight")), I_x)
    if np.frexp(ratio)[0] == 0.5:
        down = rewrite.scale_pow2(down, ratio)
    else:  # one float32 rounding per weight: exact in the maths, last-bit in the numbers
        down = rewrite.to_float(down) * np.float32(ratio)
        enc.notes.append(
            f"layer {i}: dense down projection scaled by E/k = {ratio:g} in float32 (not a power of 2)"
        )
    yield OutTensor(names["down_proj"], rewrite.stack_copies(down, E), "matrix")
    yield OutTensor(shexp["gate_proj"], np.zeros((S, H), np.float32), "matrix")
    yield OutTensor(shexp["up_proj"], np.zeros((S, H), np.float32), "matrix")
    yield OutTensor(shexp["down_proj"], np.zeros((H, S), np.float32), "matrix")
    # The shared expert's output is exactly 0; its gate only has to stay finite: z = one channel of the
    # normalized input (the one with the largest norm weight), so silu(z)/z is a finite number.
    norm = rewrite.to_float(get(_p(i, "post_attention_layernorm.weight")))
    gate = np.zeros(H, np.float32)
    gate[int(np.argmax(np.abs(norm)))] = 1.0
    yield OutTensor(gguf_name(_p(i, "mlp.shared_expert_gate.weight")), gate, "vector")


def _granite_moe_ffn(enc: Encoding, i: int, get) -> Iterator[OutTensor]:
    """One granite_swa MoE layer: router, stacked experts, ungated shared expert (module docstring)."""
    s = enc.spec
    f = _moe(s)
    E, I_x, H = f.num_experts, enc.width(expert_width(s)), s.hidden_size
    S = enc.width(f.shared_intermediate) if f.shared_intermediate else 0
    names = {p: gguf_name(_p(i, f"mlp.experts.{p}")) for p in ("gate_proj", "up_proj", "down_proj")}
    up_shexp = gguf_name(_p(i, "mlp.shared_expert.up_proj.weight"))  # holds gate and up, fused
    down_shexp = gguf_name(_p(i, "mlp.shared_expert.down_proj.weight"))
    if isinstance(s.layers[i].ffn, MoEFFN):
        yield OutTensor(gguf_name(_p(i, "mlp.gate.weight")), get(_p(i, "mlp.gate.weight")), "router")
        for p in ("gate_proj", "up_proj"):
            yield OutTensor(names[p], rewrite.pad_rows(get(_p(i, f"mlp.experts.{p}")), I_x), "matrix")
        down = rewrite.pad_cols(get(_p(i, "mlp.experts.down_proj")), I_x)
        yield OutTensor(names["down_proj"], down, "matrix")
        if S:
            # llama.cpp's swiglu on the fused tensor: silu(first half) * second half -> [gate; up].
            gate, up = (
                rewrite.pad_rows(get(_p(i, f"mlp.shared_expert.{p}.weight")), S)
                for p in ("gate_proj", "up_proj")
            )
            yield OutTensor(up_shexp, rewrite.concat_rows(gate, up), "matrix")
            # sigmoid(0) = 1/2: the zero gate (checked by choose_encoding) as an exact power-of-two scale.
            down = rewrite.pad_cols(get(_p(i, "mlp.shared_expert.down_proj.weight")), S)
            yield OutTensor(down_shexp, rewrite.scale_pow2(down, 0.5), "matrix")
        return
    # Dense layer: all-zero router -> uniform softmax; the k picked weigh (1/E) / (k/E) = 1/k each after
    # renormalization (exact: k is a power of two), so k identical copies sum to the dense FFN.
    yield OutTensor(gguf_name(_p(i, "mlp.gate.weight")), np.zeros((E, H), np.float32), "router")
    for p in ("gate_proj", "up_proj"):
        w = rewrite.pad_rows(get(_p(i, f"mlp.{p}.weight")), I_x)
        yield OutTensor(names[p], rewrite.stack_copies(w, E), "matrix")
    down = rewrite.pad_cols(get(_p(i, "mlp.down_proj.weight")), I_x)
    yield OutTensor(names["down_proj"], rewrite.stack_copies(down, E), "matrix")
    if S:  # a shared expert of zeros adds exactly 0 (silu(0) * 0)
        yield OutTensor(up_shexp, np.zeros((2 * S, H), np.float32), "matrix")
        yield OutTensor(down_shexp, np.zeros((H, S), np.float32), "matrix")
