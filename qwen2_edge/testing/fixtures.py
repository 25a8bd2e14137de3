"""A factory of small random Hugging Face checkpoints covering every feature the tool must handle.

Each checkpoint is a real `Qwen2ForCausalLM` / `Qwen2MoeForCausalLM` saved by transformers with a real
byte-level BPE tokenizer trained on the fly, and more embedding rows than tokenizer entries (as Qwen2 has).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..model.tokenizer import save_tokenizer, train_bpe

TOKENIZER_VOCAB = 320  # 256 bytes + merges + 3 specials
EMBED_ROWS = 384  # > TOKENIZER_VOCAB, like Qwen2's 151,936 rows for ~151,646 tokens


@dataclass(frozen=True)
class FixtureSpec:
    architecture: str = "Qwen2ForCausalLM"
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 128
    tie: bool = True
    vocab_rows: int = EMBED_ROWS
    config: dict[str, Any] = field(default_factory=dict)  # extra config.json keys
    seed: int = 0
    std: float = 0.08  # larger than transformers' 0.02 so logits and routing are far from ties


FIXTURES: dict[str, FixtureSpec] = {
    "dense": FixtureSpec(),
    "dense_untied": FixtureSpec(tie=False, seed=1),
    # GQA with a single KV head, sliding window 8 on layers >= 1 (Qwen2: i >= max_window_layers).
    "sliding": FixtureSpec(
        layers=3,
        kv_heads=1,
        seed=2,
        config={"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1},
    ),
    # MoE hybrid: layer 1 dense (mlp_only_layers), 4 experts top-2 + shared expert, untied.
    "moe": FixtureSpec(
        architecture="Qwen2MoeForCausalLM",
        layers=3,
        tie=False,
        seed=3,
        config={
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "shared_expert_intermediate_size": 96,
            "mlp_only_layers": [1],
            "norm_topk_prob": False,
        },
    ),
    # MoE hybrid with sliding window on even layers < max_window_layers, norm_topk_prob, tied, 1 KV head.
    "moe_sliding": FixtureSpec(
        architecture="Qwen2MoeForCausalLM",
        layers=4,
        kv_heads=1,
        seed=4,
        config={
            "num_experts": 8,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "shared_expert_intermediate_size": 64,
            "mlp_only_layers": [3],
            "norm_topk_prob": True,
            "use_sliding_window": True,
            "sliding_window": 8,
            "max_window_layers": 3,
        },
    ),
    # MoE hybrid whose GGUF only llama.cpp's step35 can hold: top-3 of 6 experts (not a power of two),
    # norm_topk_prob=false with sliding windows, no shared expert, experts 40 wide (not a multiple of 32),
    # window 8 on layers 0 (MoE) and 2 (dense), untied.
    "moe_sliding_k3": FixtureSpec(
        architecture="Qwen2MoeForCausalLM",
        layers=4,
        tie=False,
        seed=8,
        config={
            "num_experts": 6,
            "num_experts_per_tok": 3,
            "moe_intermediate_size": 40,
            "shared_expert_intermediate_size": 0,
            "mlp_only_layers": [2],
            "norm_topk_prob": False,
            "use_sliding_window": True,
            "sliding_window": 8,
            "max_window_layers": 4,
        },
    ),
    # Qwen2.5-0.5B-shaped config: rope_theta 1e6, GQA 3:1, a sliding_window value set but
    # use_sliding_window=false and max_window_layers == the layer count (nothing slides), tied.
    "qwen25": FixtureSpec(
        hidden=96,
        heads=6,
        kv_heads=2,
        seed=9,
        config={"rope_theta": 1000000.0, "use_sliding_window": False, "sliding_window": 32768, "max_window_layers": 2},
    ),
    # Qwen2.5-1.5B/7B-shaped: untied, use_sliding_window=false with sliding_window 131072 and
    # max_window_layers (1) BELOW the layer count: a converter that reads max_window_layers without
    # use_sliding_window would window layers 1-2 (with a 131072 window: invisible at short lengths).
    "qwen25_untied": FixtureSpec(
        hidden=96,
        layers=3,
        heads=6,
        kv_heads=2,
        tie=False,
        seed=10,
        config={
            "rope_theta": 1000000.0,
            "use_sliding_window": False,
            "sliding_window": 131072,
            "max_window_layers": 1,
            "max_position_embeddings": 32768,
        },
    ),
}


@lru_cache(maxsize=4)
def fixture_tokenizer(vocab_size: int = TOKENIZER_VOCAB):
    from ..data.corpus import train_texts

    return train_bpe(train_texts()[:20], vocab_size)


def config_dict(spec: FixtureSpec, tokenizer_vocab: int = TOKENIZER_VOCAB) -> dict[str, Any]:
    from ..model.families import FAMILIES

    tok = fixture_tokenizer(tokenizer_vocab)
    eos = tok.token_to_id("<|endoftext|>")
    cfg: dict[str, Any] = {
        "architectures": [spec.architecture],
        "model_type": FAMILIES[spec.architecture].model_type,
        "vocab_size": spec.vocab_rows,
        "hidden_size": spec.hidden,
        "intermediate_size": spec.intermediate,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "max_position_embeddings": 4096,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": spec.tie,
        "hidden_act": "silu",
        "bos_token_id": eos,
        "eos_token_id": eos,
        "use_sliding_window": False,
        "sliding_window": 4096,
        "max_window_layers": spec.layers,
    }
    cfg.update(spec.config)
    return cfg


def make_checkpoint(
    name_or_spec: str | FixtureSpec,
    folder: str | Path,
    max_shard_size: str | None = None,
    dtype: str = "float32",
) -> Path:
    """Write a random checkpoint (config, safetensors, tokenizer) into `folder` and return it."""
    import torch

    from ..model.families import FAMILIES, transformers_class

    spec = FIXTURES[name_or_spec] if isinstance(name_or_spec, str) else name_or_spec
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg_dict = config_dict(spec)
    family = FAMILIES[spec.architecture]
    config = transformers_class(family.config_class).from_dict(cfg_dict)
    torch.manual_seed(spec.seed)
    model = transformers_class(family.model_class)(config).eval()
    randomize_(model, spec.seed, spec.std)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.to(getattr(torch, dtype)).save_pretrained(folder, **kwargs)
    # Keep config.json as we wrote it (transformers adds resolved defaults, which is fine, but we
    # want fixtures to exercise derivation of layer_types from use_sliding_window/max_window_layers).
    (folder / "config.json").write_text(json.dumps({**cfg_dict, "torch_dtype": dtype}, indent=2) + "\n")
    save_tokenizer(fixture_tokenizer(), folder)
    return folder


def randomize_(model, seed: int, std: float) -> None:
    """Deterministic weights: N(0, std) matrices, norms around 1, biases small."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))  # unit-scale embeddings, like trained models
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))
