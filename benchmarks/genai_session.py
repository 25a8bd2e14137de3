"""onnxruntime-genai as a Session, for benchmarks only: the same measurement over an ONNX folder that
onnxruntime-genai can load (ours, with its genai_config.json, or the model builder's).

genai's Generator keeps the KV cache; `append_tokens` runs the model over new tokens. Only the last
position's logits come back (all a greedy decoder needs), so `append` returns a [1, V] array.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from qwen2_edge.runtimes.base import Session


class GenaiSession(Session):
    runtime = "onnxruntime-genai"
    format = "onnx"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime_genai as og

        self._og = og
        self.path = Path(path)
        config = og.Config(str(self.path))
        if threads:
            options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
            config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        self.model = og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)
        self.max_length = 2048
        self._gen = None
        self._n = 0

    def reserve(self, max_length: int) -> None:
        """genai preallocates the cache for max_length positions; keep it to what the benchmark uses."""
        self.max_length = max_length
        self.reset()

    def reset(self) -> None:
        self._gen = None
        self._n = 0

    @property
    def n_cached(self) -> int:
        return self._n

    def append(self, ids: Sequence[int], last_only: bool = False) -> np.ndarray:  # noqa: ARG002 - always last
        if self._gen is None:
            params = self._og.GeneratorParams(self.model)
            params.set_search_options(max_length=self.max_length, do_sample=False)
            self._gen = self._og.Generator(self.model, params)
        self._gen.append_tokens(np.asarray(list(ids), dtype=np.int32))
        self._n += len(ids)
        logits = np.asarray(self._gen.get_logits(), dtype=np.float32)
        return logits.reshape(-1, logits.shape[-1])[-1:]

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(np.asarray(list(ids), dtype=np.int32))
