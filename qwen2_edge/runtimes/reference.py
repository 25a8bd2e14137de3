"""The float reference: the transformers implementation of the checkpoint's architecture, float32 on CPU."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..model.checkpoint import Checkpoint, open_checkpoint
from ..model.families import transformers_class
from .base import Session
from .folder_text import FolderTokenizerMixin


def load_reference_model(ckpt: Checkpoint, dtype: torch.dtype = torch.float32):
    """transformers' own model class for this checkpoint, weights memory-mapped from safetensors.

    Only safetensors are read (the checkpoint was validated and pickle refused); no remote code.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    cls = transformers_class(ckpt.spec.family_row.model_class)
    model = cls.from_pretrained(
        str(ckpt.path),
        config=ckpt.spec.hf_config(),
        dtype=dtype,
        use_safetensors=True,
        local_files_only=True,
        trust_remote_code=False,
    )
    return model.eval()


class ReferenceSession(FolderTokenizerMixin, Session):
    runtime = "transformers"
    format = "hf"

    def __init__(
        self,
        path: str | Path,
        threads: int | None = None,
        model=None,
        kv_cache: str | None = None,
        n_ctx: int | None = None,  # noqa: ARG002 - transformers' cache grows as needed
    ) -> None:
        self.ckpt = open_checkpoint(path)
        self.path = self.ckpt.path
        self.kv_cache = self.resolve_kv_cache(kv_cache)  # the float reference: f32 only
        self.spec = self.ckpt.spec
        if threads:
            torch.set_num_threads(threads)
        self.model = model if model is not None else load_reference_model(self.ckpt)
        self._cache = None
        self._n = 0

    def reset(self) -> None:
        self._cache = None
        self._n = 0

    @property
    def n_cached(self) -> int:
        return self._n

    @torch.inference_mode()
    def append(self, ids: Sequence[int], last_only: bool = False) -> np.ndarray:
        from transformers import DynamicCache

        if self._cache is None:
            self._cache = DynamicCache(config=self.model.config)
        x = torch.tensor([list(ids)], dtype=torch.long)
        out = self.model(input_ids=x, cache=self._cache, use_cache=True, logits_to_keep=1 if last_only else 0)
        self._n += len(ids)
        return out.logits[0].float().numpy()

    @torch.inference_mode()
    def logits(self, ids: Sequence[int]) -> np.ndarray:
        x = torch.tensor([list(ids)], dtype=torch.long)
        return self.model(input_ids=x, use_cache=False).logits[0].float().numpy()
