"""Hugging Face canonical tensor names -> GGUF tensor names (llama.cpp's LLM_TENSOR_NAMES), one table."""

from __future__ import annotations

import re

# Per-layer suffix (after `model.layers.N.`) -> GGUF suffix (after `blk.N.`). Experts use the stacked
# canonical names (`mlp.experts.gate_proj` [E, I, H]) and map onto llama.cpp's 3-D `*_exps` tensors.
LAYER_NAMES: dict[str, str] = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "mlp.gate.weight": "ffn_gate_inp.weight",
    "mlp.experts.gate_proj": "ffn_gate_exps.weight",
    "mlp.experts.up_proj": "ffn_up_exps.weight",
    "mlp.experts.down_proj": "ffn_down_exps.weight",
    "mlp.shared_expert.gate_proj.weight": "ffn_gate_shexp.weight",
    "mlp.shared_expert.up_proj.weight": "ffn_up_shexp.weight",
    "mlp.shared_expert.down_proj.weight": "ffn_down_shexp.weight",
    "mlp.shared_expert_gate.weight": "ffn_gate_inp_shexp.weight",
}

GLOBAL_NAMES: dict[str, str] = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}

# Tensors the encodings add that have no Hugging Face counterpart.
ATTN_SINKS = "attn_sinks.weight"

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def gguf_name(hf_name: str) -> str:
    """The GGUF name of a canonical Hugging Face tensor name; KeyError for a name with no mapping."""
    if hf_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[hf_name]
    m = _LAYER.match(hf_name)
    if m is None or m.group(2) not in LAYER_NAMES:
        raise KeyError(hf_name)
    return f"blk.{m.group(1)}.{LAYER_NAMES[m.group(2)]}"


def block_name(layer: int, suffix: str) -> str:
    return f"blk.{layer}.{suffix}"
