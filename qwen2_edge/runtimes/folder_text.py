"""Text handling for runtimes whose artifact is a folder with HF tokenizer files (checkpoint, ONNX)."""

from __future__ import annotations

from collections.abc import Iterable
from functools import cached_property

from ..model.tokenizer import TextTokenizer


class FolderTokenizerMixin:
    """encode / decode / stop ids / chat template from `self.path`'s tokenizer.json (loaded on first use).

    Needs `self.path` and `self.spec` (its eos ids)."""

    @cached_property
    def tokenizer(self) -> TextTokenizer:
        return TextTokenizer(self.path)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(ids)

    def stop_ids(self) -> set[int]:
        return self.tokenizer.stop_ids(self.spec.eos_token_id)

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return self.tokenizer.apply_chat_template(messages)
