"""Write a float Hugging Face checkpoint that shares config and tokenizer with a source checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..model.checkpoint import Checkpoint

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
)


def write_hf_checkpoint(src: Checkpoint, tensors: dict[str, torch.Tensor], folder: str | Path) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(src.path / "config.json", folder / "config.json")
    for f in TOKENIZER_FILES:
        if (src.path / f).is_file():
            shutil.copy(src.path / f, folder / f)
    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        str(folder / "model.safetensors"),
        metadata={"format": "pt"},
    )
    return folder
