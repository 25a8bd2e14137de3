"""The whole decoder graph: inputs, embedding, layers (GQA + norms + FFN/MoE), final norm, lm_head.

Graph I/O follows onnxruntime-genai's decoder convention so the folder loads there as well:
input_ids [batch, seq], attention_mask [batch, total_seq], past_key_values.N.key/value
[batch, kv_heads, past_seq, head_dim] -> logits [batch, seq, vocab rows], present.N.key/value.
"""

from __future__ import annotations

from .attention import group_query_attention, rotary_caches
from .embedding import embedding, lm_head
from .ffn import swiglu_mlp
from .graph import FLOAT, INT32, INT64, Graph
from .kv_cache import past_names, present_names
from .linear import linear
from .moe import sparse_moe_block
from .norms import rms_norm, skip_rms_norm
from .weights import Weights


def kv_cache_shape(spec, layer, side: str) -> list[int | str]:
    """Full-attention layers: [batch, kv_heads, past/total sequence, head_dim]. Sliding layers hold a
    window-sized buffer (GroupQueryAttention sliding_window_cache, kv_cache.py) whose length is its own
    symbolic dim, so shape inference never unifies it with the full layers' growing one."""
    if layer.attention.window is not None:
        seq = "sliding_cache_length"
    else:
        seq = "past_sequence_length" if side == "past" else "total_sequence_length"
    return ["batch_size", spec.num_kv_heads, seq, spec.head_dim]


def build_decoder(w: Weights) -> Graph:
    spec = w.spec
    g = Graph()
    ids = g.add_input("input_ids", INT64, ["batch_size", "sequence_length"])
    mask = g.add_input("attention_mask", INT64, ["batch_size", "total_sequence_length"])
    for layer in spec.layers:
        for name in past_names(layer.index):
            g.add_input(name, FLOAT, kv_cache_shape(spec, layer, "past"))
    g.add_output("logits", FLOAT, ["batch_size", "sequence_length", spec.vocab_size])
    for layer in spec.layers:
        for name in present_names(layer.index):
            g.add_output(name, FLOAT, kv_cache_shape(spec, layer, "present"))

    seqlens_k, total_len = _attention_lengths(g, mask)
    rotary = rotary_caches(g, spec)
    eps = spec.rms_norm_eps
    residual, table = embedding(g, w, ids)
    branch = None  # output of the previous sublayer, not yet added to the residual stream
    for layer in spec.layers:
        p, node = f"model.layers.{layer.index}.", f"/model/layers.{layer.index}"
        gamma = _norm_weight(g, w, p + "input_layernorm.weight")
        if branch is None:
            x = rms_norm(g, f"{node}/input_layernorm", residual, gamma, eps)
        else:
            x, residual = skip_rms_norm(g, f"{node}/input_layernorm", residual, branch, gamma, eps)
        branch = _attention(g, w, f"{node}/attn", x, layer, seqlens_k, total_len, rotary)
        gamma = _norm_weight(g, w, p + "post_attention_layernorm.weight")
        x, residual = skip_rms_norm(g, f"{node}/post_attention_layernorm", residual, branch, gamma, eps)
        if layer.ffn.kind == "moe":
            branch = sparse_moe_block(g, w, f"{node}/moe", x, layer.index, layer.ffn)
        else:
            branch = swiglu_mlp(g, w, f"{node}/mlp", x, p + "mlp.", layer.ffn.intermediate)
    final, _ = skip_rms_norm(g, "/model/norm", residual, branch, _norm_weight(g, w, "model.norm.weight"), eps)
    lm_head(g, w, _keep_last_positions(g, final), table, "logits")
    return g


LOGITS_TO_KEEP = "num_logits_to_keep"


def _keep_last_positions(g: Graph, hidden: str) -> str:
    """Logits only for the last `num_logits_to_keep` positions, 0 = every position (int64 [1] input, the
    Hugging Face convention; onnxruntime-genai recognizes the name and feeds 0). Generation passes 1: the
    lm_head then runs on one row instead of every prompt position."""
    g.add_input(LOGITS_TO_KEEP, INT64, [1])
    node = "/model/num_logits_to_keep"
    start = g.op("Neg", [LOGITS_TO_KEEP], f"{node}/Neg")  # -0 = 0: Slice keeps everything
    return g.op("Slice", [hidden, start, g.const([1 << 62]), g.const([1])], f"{node}/Slice")


def _norm_weight(g: Graph, w: Weights, name: str) -> str:
    return w.float_input(g, name, w.array(name))


def _attention_lengths(g: Graph, mask: str) -> tuple[str, str]:
    """GroupQueryAttention's seqlens_k (tokens in the mask - 1, int32 [batch]) and total length (int32 scalar)."""
    node = "/model/attn_mask_reformat"
    total = g.op("ReduceSum", [mask, g.const([1])], f"{node}/ReduceSum", keepdims=0)
    seqlens = g.op("Sub", [total, g.const(1)], f"{node}/Sub")
    seqlens = g.op("Cast", [seqlens], f"{node}/Sub/Cast", to=INT32)
    shape = g.op("Shape", [mask], f"{node}/Shape")
    width = g.op("Gather", [shape, g.const(1)], f"{node}/Gather", axis=0)
    return seqlens, g.op("Cast", [width], f"{node}/Gather/Cast", to=INT32)


def _attention(g, w: Weights, node: str, x: str, layer, seqlens_k: str, total_len: str, rotary) -> str:
    p = f"model.layers.{layer.index}.self_attn."
    names = [p + f"{n}_proj.weight" for n in "qkv"]
    biases = [p + f"{n}_proj.bias" for n in "qkv"] if w.spec.qkv_bias else None
    qkv = linear(g, w, x, f"{node}/qkv_proj", names, biases)  # packed: GQA splits Q, K, V itself
    out = group_query_attention(
        g,
        f"{node}/GroupQueryAttention",
        w.spec,
        layer,
        qkv,
        past_names(layer.index),
        present_names(layer.index),
        seqlens_k,
        total_len,
        rotary,
    )
    return linear(g, w, out, f"{node}/o_proj", [p + "o_proj.weight"])
