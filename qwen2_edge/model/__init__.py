"""Model spec (typed view of config.json), lazy safetensors checkpoint, tokenizer, built-in models."""

from .checkpoint import Checkpoint, open_checkpoint
from .spec import Attention, DenseFFN, LayerSpec, ModelSpec, MoEFFN, read_spec

__all__ = [
    "Attention",
    "Checkpoint",
    "DenseFFN",
    "LayerSpec",
    "ModelSpec",
    "MoEFFN",
    "open_checkpoint",
    "read_spec",
]
