"""The Session protocol every runtime implements: prefill logits, incremental decode, generation."""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import UnsupportedError
from .sampling import Sampler


class Session(abc.ABC):
    """A loaded model in one runtime. Logits are float32 numpy arrays [tokens, vocab rows]."""

    runtime: ClassVar[str]  # "transformers", "onnxruntime", "llama.cpp"
    format: ClassVar[str]  # "hf", "onnx", "gguf"
    path: Path
    quant: str = "f32"
    # KV-cache precisions this runtime can hold (runtimes/options.py KV_CACHE_TYPES names) and its default.
    kv_cache_types: ClassVar[tuple[str, ...]] = ("f32",)
    default_kv_cache: ClassVar[str] = "f32"
    kv_cache: str = "f32"  # what this session actually holds

    @classmethod
    def choose_kv_cache(cls, requested: str | None, path: str | Path | None = None) -> str:
        """The KV-cache type to use, from the class table alone (so a command can refuse before it opens
        anything): the runtime default for None, a one-line refusal for a type it lacks."""
        if requested is None:
            return cls.default_kv_cache
        if requested not in cls.kv_cache_types:
            raise UnsupportedError(
                f"{cls.runtime} cannot hold a {requested} KV cache for this artifact "
                f"(choose from {', '.join(cls.kv_cache_types)})",
                path,
            )
        return requested

    def resolve_kv_cache(self, requested: str | None) -> str:
        return self.choose_kv_cache(requested, getattr(self, "path", None))

    def kv_cache_bytes(self) -> int | None:
        """Bytes the runtime's KV-cache buffers occupy now, read from the runtime (not computed from the
        geometry); None where the runtime does not expose them."""
        return None

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget the KV cache."""

    @abc.abstractmethod
    def append(self, ids: Sequence[int], last_only: bool = False) -> np.ndarray:
        """Feed `ids` after the cached tokens (KV cache); return their logits [len(ids), V], or only the last
        position's [1, V] with last_only (what generation needs: a runtime then skips the lm_head on the
        other positions, which for Qwen2's 151,936-row vocabulary is 311 MB of float32 logits per 512-token
        prefill chunk and a quarter of the 0.5B model's prefill FLOPs)."""

    @property
    @abc.abstractmethod
    def n_cached(self) -> int:
        """Tokens currently in the KV cache."""

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits for every position of a fresh sequence (prefill), leaving the session reset."""
        self.reset()
        try:
            return self.append(ids)
        finally:
            self.reset()

    # -- text ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abc.abstractmethod
    def decode(self, ids: Iterable[int]) -> str: ...

    def stop_ids(self) -> set[int]:
        return set()

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        raise NotImplementedError(f"{self.runtime} session has no chat template")

    # -- generation ----------------------------------------------------------------------------
    def generate(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        sampler: Sampler | None = None,
        stop_ids: Iterable[int] | None = None,
        keep_cache: bool = False,
    ) -> Iterator[int]:
        """Yield new tokens one at a time (greedy unless a sampler is given), stopping after a stop id.

        keep_cache=True appends `prompt_ids` after the tokens already cached (multi-turn chat: the caller
        passes the previous turn's last generated token, which is never fed, followed by the new turn).
        """
        sampler = sampler or Sampler()
        stops = self.stop_ids() if stop_ids is None else set(stop_ids)
        if not prompt_ids:
            raise ValueError("empty prompt")
        if not keep_cache:
            self.reset()
        logits = self.append(list(prompt_ids), last_only=True)[-1]
        for i in range(max_new_tokens):
            tok = sampler(logits)
            yield tok
            if tok in stops or i == max_new_tokens - 1:
                return
            logits = self.append([tok], last_only=True)[-1]

    def greedy(self, prompt_ids: Sequence[int], max_new_tokens: int) -> list[int]:
        return list(self.generate(prompt_ids, max_new_tokens, stop_ids=()))

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
