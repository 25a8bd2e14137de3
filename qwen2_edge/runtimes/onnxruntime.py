"""onnxruntime over an exported ONNX folder: prefill, incremental decode through the graph's KV cache.

The KV cache lives in buffers this session owns and binds as both past input and present output of every
GroupQueryAttention (past_present_share_buffer): a decode step writes its row in place instead of copying
the whole cache into a new present tensor. Full-attention layers' buffers grow by doubling (so a short
chat never pays for the model's maximum context, and a long one copies each row O(1) times); sliding
layers' buffers are window-sized (exporters/onnx/kv_cache.py) and never grow.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ArtifactError, UserError
from ..exporters.onnx.kv_cache import LayerCache, cache_layout, past_names, present_names
from ..model.spec import read_spec
from .base import Session
from .folder_text import FolderTokenizerMixin

MODEL_FILE = "model.onnx"
MIN_CAPACITY = 256  # first allocation of a full-attention buffer (rows)
# GroupQueryAttention's CPU kernel allocates heads x chunk x buffer-rows float32 attention scores per call:
# prefill chunks are sized to keep that under this many bytes (long contexts prefill in smaller chunks).
ATTENTION_SCRATCH_BYTES = 128 << 20
MAX_PREFILL_CHUNK = 512


def is_onnx_folder(p: Path) -> bool:
    return p.is_dir() and (p / MODEL_FILE).is_file()


class _Buffer:
    """One layer's key and value buffers, [1, kv_heads, rows, head_dim], with the OrtValues bound to them.

    The numpy arrays are kept here on purpose: an OrtValue made from numpy does not own its memory, and
    the OrtValues onnxruntime hands back for a bound output do not keep the array alive either."""

    def __init__(self, rows: int, kv_heads: int, head_dim: int, dtype=np.float32) -> None:
        from onnxruntime import OrtValue

        self.rows = rows
        # np.zeros maps fresh pages: rows never written cost address space, not resident memory.
        self.arrays = [np.zeros((1, kv_heads, rows, head_dim), dtype) for _ in range(2)]
        self.values = [OrtValue.ortvalue_from_numpy(a) for a in self.arrays]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)

    def grown(self, rows: int, used: int) -> _Buffer:
        new = _Buffer(rows, self.arrays[0].shape[1], self.arrays[0].shape[3], self.arrays[0].dtype)
        for old, a in zip(self.arrays, new.arrays, strict=True):
            a[:, :, :used] = old[:, :, :used]
        return new


class OnnxSession(FolderTokenizerMixin, Session):
    runtime = "onnxruntime"
    format = "onnx"

    def __init__(
        self,
        path: str | Path,
        threads: int | None = None,
        kv_cache: str | None = None,
        n_ctx: int | None = None,
    ) -> None:
        import onnx
        import onnxruntime as ort

        self.path = Path(path)
        if not is_onnx_folder(self.path):
            raise ArtifactError(f"no {MODEL_FILE} (not an exported ONNX folder)", self.path)
        self.kv_cache = self.resolve_kv_cache(kv_cache)
        self.spec = read_spec(self.path / "config.json")
        self.max_ctx = n_ctx or self.spec.max_position_embeddings
        self._fixed_ctx = n_ctx is not None  # sized up front by a caller that knows its length
        try:
            graph = onnx.load(str(self.path / MODEL_FILE), load_external_data=False).graph
        except Exception as e:  # a truncated or foreign file: one line, not a traceback
            raise ArtifactError(f"onnxruntime cannot load it ({' '.join(str(e).split())[:300]})", self.path) from None
        self.layout: list[LayerCache] = cache_layout(graph)
        del graph
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(self.path / MODEL_FILE), opts, providers=["CPUExecutionProvider"]
            )
        except Exception as e:
            raise ArtifactError(
                f"onnxruntime cannot load it ({' '.join(str(e).split())[:300]})", self.path
            ) from None
        names = {i.name for i in self.session.get_inputs()}
        if len(self.layout) != self.spec.num_layers or any(
            past_names(c.index)[0] not in names for c in self.layout
        ):
            raise ArtifactError("the graph's attention nodes do not match config.json's layers", self.path)
        self.quant = _manifest_quant(self.path)
        self._buffers: dict[int, _Buffer] = {}
        self._ones = np.ones((1, 0), np.int64)
        self._binding = None
        self._n = 0

    # -- KV cache ---------------------------------------------------------------------------------
    def reset(self) -> None:
        # Buffers are kept: positions >= n_cached are never read, and reusing the pages avoids faulting
        # them in again on the next round.
        self._n = 0

    @property
    def n_cached(self) -> int:
        return self._n

    def kv_cache_bytes(self) -> int:
        """Bytes of the KV buffers this session holds (sliding layers: window + slack rows, whatever the
        context; full layers: their current capacity)."""
        return sum(b.nbytes for b in self._buffers.values())

    def kv_cache_rows(self) -> dict[int, int]:
        """Buffer rows per layer (what kv_cache_bytes counts), for reports."""
        return {i: b.rows for i, b in self._buffers.items()}

    def _ensure_capacity(self, total: int) -> None:
        if total > self.max_ctx:
            raise UserError(
                f"sequence of {total} tokens exceeds the session's context of {self.max_ctx} tokens", self.path
            )
        s = self.spec
        changed = False
        for c in self.layout:
            buf = self._buffers.get(c.index)
            if c.windowed:
                if buf is None:
                    self._buffers[c.index] = _Buffer(c.capacity(self.max_ctx), s.num_kv_heads, s.head_dim)
                    changed = True
                continue
            if buf is not None and buf.rows >= total:
                continue
            rows = self.max_ctx if self._fixed_ctx else min(self.max_ctx, max(MIN_CAPACITY, 2 * total))
            rows = max(rows, total)
            self._buffers[c.index] = (
                _Buffer(rows, s.num_kv_heads, s.head_dim) if buf is None else buf.grown(rows, self._n)
            )
            changed = True
        if changed or self._binding is None:
            self._bind_cache()

    def _bind_cache(self) -> None:
        io = self.session.io_binding()
        io.bind_output("logits")  # first: get_outputs() lists outputs in binding order
        for c in self.layout:
            buf = self._buffers[c.index]
            for past, present, value in zip(past_names(c.index), present_names(c.index), buf.values, strict=True):
                io.bind_ortvalue_input(past, value)
                io.bind_ortvalue_output(present, value)
        self._binding = io

    def _chunk(self) -> int:
        rows = max((b.rows for b in self._buffers.values()), default=MIN_CAPACITY)
        per_token = 4 * self.spec.num_heads * rows
        return int(max(16, min(MAX_PREFILL_CHUNK, ATTENTION_SCRATCH_BYTES // per_token)))

    def append(self, ids: Sequence[int]) -> np.ndarray:
        ids = [int(i) for i in ids]
        self._ensure_capacity(self._n + len(ids))
        outs = []
        start = 0
        while start < len(ids):
            chunk = ids[start : start + self._chunk()]
            outs.append(self._run(chunk))
            start += len(chunk)
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def _run(self, ids: list[int]) -> np.ndarray:
        total = self._n + len(ids)
        if self._ones.shape[1] < total:
            self._ones = np.ones((1, max(total, 2 * self._ones.shape[1])), np.int64)
        io = self._binding
        io.bind_cpu_input("input_ids", np.asarray([ids], dtype=np.int64))
        io.bind_cpu_input("attention_mask", self._ones[:, :total])
        io.bind_output("logits")  # unallocated again: its shape changes with the chunk length
        self.session.run_with_iobinding(io)
        self._n = total
        return io.get_outputs()[0].numpy()[0]


def _manifest_quant(folder: Path) -> str:
    import json

    try:
        return str(json.loads((folder / "manifest.json").read_text()).get("quant", "f32"))
    except (OSError, ValueError):
        return "f32"
