"""onnxruntime over an exported ONNX folder: prefill, incremental decode through the graph's KV cache."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ArtifactError
from ..model.spec import read_spec
from .base import Session
from .folder_text import FolderTokenizerMixin

MODEL_FILE = "model.onnx"


def is_onnx_folder(p: Path) -> bool:
    return p.is_dir() and (p / MODEL_FILE).is_file()


class OnnxSession(FolderTokenizerMixin, Session):
    runtime = "onnxruntime"
    format = "onnx"

    def __init__(
        self,
        path: str | Path,
        threads: int | None = None,
        kv_cache: str | None = None,
        n_ctx: int | None = None,  # noqa: ARG002
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.kv_cache = self.resolve_kv_cache(kv_cache)
        if not is_onnx_folder(self.path):
            raise ArtifactError(f"no {MODEL_FILE} (not an exported ONNX folder)", self.path)
        self.spec = read_spec(self.path / "config.json")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(self.path / MODEL_FILE), opts, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # a truncated or foreign file: one line, not a traceback
            raise ArtifactError(
                f"onnxruntime cannot load it ({' '.join(str(e).split())[:300]})", self.path
            ) from None
        self.quant = _manifest_quant(self.path)
        self._past_names = [
            i.name for i in self.session.get_inputs() if i.name.startswith("past_key_values.")
        ]
        self._present_names = [n.replace("past_key_values.", "present.") for n in self._past_names]
        self.reset()

    def reset(self) -> None:
        from onnxruntime import OrtValue

        s = self.spec
        empty = OrtValue.ortvalue_from_numpy(np.zeros((1, s.num_kv_heads, 0, s.head_dim), np.float32))
        self._past = dict.fromkeys(self._past_names, empty)
        self._n = 0

    @property
    def n_cached(self) -> int:
        return self._n

    def append(self, ids: Sequence[int]) -> np.ndarray:
        from onnxruntime import OrtValue

        ids = np.asarray([list(ids)], dtype=np.int64)
        feeds = {
            "input_ids": OrtValue.ortvalue_from_numpy(ids),
            "attention_mask": OrtValue.ortvalue_from_numpy(np.ones((1, self._n + ids.shape[1]), np.int64)),
            **self._past,
        }
        # The KV cache stays in onnxruntime's OrtValues from step to step (no round trip through numpy).
        out = self.session.run_with_ort_values(["logits", *self._present_names], feeds)
        self._past = dict(zip(self._past_names, out[1:], strict=True))
        self._n += ids.shape[1]
        return out[0].numpy()[0]


def _manifest_quant(folder: Path) -> str:
    import json

    try:
        return str(json.loads((folder / "manifest.json").read_text()).get("quant", "f32"))
    except (OSError, ValueError):
        return "f32"
