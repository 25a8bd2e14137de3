"""Model spec (typed view of config.json), lazy safetensors checkpoint, tokenizer, built-in models.

Names are imported on first use (PEP 562): `checkpoint` needs torch, and a benchmark child that only reads
a config.json through `model.spec` must not carry torch in its resident memory.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .checkpoint import Checkpoint, open_checkpoint
    from .spec import Attention, DenseFFN, LayerSpec, ModelSpec, MoEFFN, read_spec

_HOME = {
    "Checkpoint": "checkpoint",
    "open_checkpoint": "checkpoint",
    "Attention": "spec",
    "DenseFFN": "spec",
    "LayerSpec": "spec",
    "ModelSpec": "spec",
    "MoEFFN": "spec",
    "read_spec": "spec",
}

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


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    raise AttributeError(name)
