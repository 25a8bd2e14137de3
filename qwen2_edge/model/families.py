"""The supported architectures, one row each. Adding a family is one row here plus its tensor layout."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str  # our short name, also the GGUF architecture string
    architecture: str  # config.json "architectures"[0]
    model_type: str  # config.json "model_type"
    config_class: str  # transformers class names, resolved lazily
    model_class: str
    # config keys without which the family is not defined (the rest have transformers' defaults)
    required: tuple[str, ...]


_COMMON = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")

FAMILIES: dict[str, Family] = {
    f.architecture: f
    for f in (
        Family("qwen2", "Qwen2ForCausalLM", "qwen2", "Qwen2Config", "Qwen2ForCausalLM", _COMMON),
        Family(
            "qwen2moe",
            "Qwen2MoeForCausalLM",
            "qwen2_moe",
            "Qwen2MoeConfig",
            "Qwen2MoeForCausalLM",
            (*_COMMON, "num_experts", "num_experts_per_tok", "moe_intermediate_size"),
        ),
    )
}


def transformers_class(name: str) -> type:
    import transformers

    return getattr(transformers, name)
