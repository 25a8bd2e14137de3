"""The Hugging Face tensor names and shapes a ModelSpec implies (the checkpoint is checked against these)."""

from __future__ import annotations

from .spec import ModelSpec, MoEFFN

Shape = tuple[int, ...]


def layer_prefix(i: int) -> str:
    return f"model.layers.{i}."


def expected_tensors(spec: ModelSpec, fused_experts: set[int] = frozenset()) -> dict[str, Shape]:
    """Every tensor the checkpoint must hold. Layers in `fused_experts` use transformers 5's fused
    `experts.gate_up_proj` / `experts.down_proj` layout instead of per-expert tensors."""
    H, hd = spec.hidden_size, spec.head_dim
    q, kv = spec.num_heads * hd, spec.num_kv_heads * hd
    t: dict[str, Shape] = {"model.embed_tokens.weight": (spec.vocab_size, H), "model.norm.weight": (H,)}
    if not spec.tie_word_embeddings:
        t["lm_head.weight"] = (spec.vocab_size, H)
    for layer in spec.layers:
        p = layer_prefix(layer.index)
        t[p + "input_layernorm.weight"] = (H,)
        t[p + "post_attention_layernorm.weight"] = (H,)
        for name, rows in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
            t[p + f"self_attn.{name}.weight"] = (rows, H)
            if spec.qkv_bias:
                t[p + f"self_attn.{name}.bias"] = (rows,)
        t[p + "self_attn.o_proj.weight"] = (H, q)
        ffn = layer.ffn
        if isinstance(ffn, MoEFFN):
            E, I, S = ffn.num_experts, ffn.expert_intermediate, ffn.shared_intermediate
            m = p + "mlp."
            t[m + "gate.weight"] = (E, H)
            if layer.index in fused_experts:
                t[m + "experts.gate_up_proj"] = (E, 2 * I, H)
                t[m + "experts.down_proj"] = (E, H, I)
            else:
                for e in range(E):
                    t[m + f"experts.{e}.gate_proj.weight"] = (I, H)
                    t[m + f"experts.{e}.up_proj.weight"] = (I, H)
                    t[m + f"experts.{e}.down_proj.weight"] = (H, I)
            t[m + "shared_expert.gate_proj.weight"] = (S, H)
            t[m + "shared_expert.up_proj.weight"] = (S, H)
            t[m + "shared_expert.down_proj.weight"] = (H, S)
            t[m + "shared_expert_gate.weight"] = (1, H)
        else:
            I = ffn.intermediate
            t[p + "mlp.gate_proj.weight"] = (I, H)
            t[p + "mlp.up_proj.weight"] = (I, H)
            t[p + "mlp.down_proj.weight"] = (H, I)
    return t
