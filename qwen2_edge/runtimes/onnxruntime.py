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

from ..errors import ArtifactError, UnsupportedError, UserError
from ..exporters.onnx.kv_cache import (
    KV_TYPE_NAMES,
    KVType,
    LayerCache,
    apply_kv_type,
    cache_layout,
    graph_kv_type,
    kv_refusal,
    kv_type,
    past_names,
    present_names,
    scales_from_absmax,
)
from ..model.spec import ModelSpec, read_spec
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
    kv_cache_types = KV_TYPE_NAMES  # exporters/onnx/kv_cache.py: how each maps to GroupQueryAttention

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
        self.resolve_kv_cache(kv_cache)
        self.spec = _folder_spec(self.path)
        self.max_ctx = n_ctx or self.spec.max_position_embeddings
        self._fixed_ctx = n_ctx is not None  # sized up front by a caller that knows its length
        try:
            model = onnx.load(str(self.path / MODEL_FILE), load_external_data=False)
        except Exception as e:  # a truncated or foreign file: one line, not a traceback
            raise ArtifactError(f"onnxruntime cannot load it ({' '.join(str(e).split())[:300]})", self.path) from None
        self.layout: list[LayerCache] = cache_layout(model.graph)
        built = graph_kv_type(model.graph)
        self.kv_cache = kv_cache or built  # the runtime's default: what the graph was exported with
        self.kv: KVType = kv_type(self.kv_cache)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        source: str | bytes = str(self.path / MODEL_FILE)
        if self.kv_cache != built:
            self._rewrite_kv(model, built)
            source = model.SerializeToString()
            # external weights (model.onnx.data) are still read from the folder
            opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(self.path))
        del model
        try:
            self.session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ArtifactError(
                f"onnxruntime cannot load it ({' '.join(str(e).split())[:300]})", self.path
            ) from None
        names = {i.name for i in self.session.get_inputs()}
        self._can_keep_last = "num_logits_to_keep" in names  # folders exported before it compute every row
        if len(self.layout) != self.spec.num_layers or any(
            past_names(c.index)[0] not in names for c in self.layout
        ):
            raise ArtifactError("the graph's attention nodes do not match config.json's layers", self.path)
        self.quant = _manifest_quant(self.path)
        self._buffers: dict[int, _Buffer] = {}
        self._ones = np.ones((1, 0), np.int64)
        self._keep = {True: np.array([1], np.int64), False: np.array([0], np.int64)}  # 0: every position
        self._binding = None
        self._n = 0

    def _rewrite_kv(self, model, built: str) -> None:
        """Turn the exported float32-cache graph into one holding a `self.kv` cache (kv_cache.py)."""
        if built != "f32":
            raise UnsupportedError(
                f"this ONNX folder's graph holds a {built} KV cache; it runs only with --kv-cache {built}", self.path
            )
        scales = None
        if self.kv.quantized:
            refusal = kv_refusal(self.kv, self.spec.head_dim, any(c.windowed for c in self.layout))
            if refusal:
                raise UnsupportedError(refusal, self.path)
            calib = _manifest(self.path).get("kv_cache_scales")
            if not isinstance(calib, dict) or "absmax" not in calib:
                raise ArtifactError(
                    f"manifest.json has no calibrated KV-cache scales, which onnxruntime's {self.kv.name} cache "
                    "needs: re-export the folder with this version of qwen2-edge",
                    self.path,
                )
            absmax = {int(i): (d["k"], d["v"]) for i, d in calib["absmax"].items()}
            scales = scales_from_absmax(self.kv, absmax)
        try:
            apply_kv_type(model, self.kv, scales)
        except ValueError as e:
            raise ArtifactError(f"cannot set a {self.kv.name} KV cache ({e})", self.path) from None

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
        changed = False
        for c in self.layout:
            buf = self._buffers.get(c.index)
            if c.windowed:
                if buf is None:
                    self._buffers[c.index] = self._new_buffer(c.capacity(self.max_ctx))
                    changed = True
                continue
            if buf is not None and buf.rows >= total:
                continue
            rows = self.max_ctx if self._fixed_ctx else min(self.max_ctx, max(MIN_CAPACITY, 2 * total))
            rows = max(rows, total)
            self._buffers[c.index] = self._new_buffer(rows) if buf is None else buf.grown(rows, self._n)
            changed = True
        if changed or self._binding is None:
            self._bind_cache()

    def _new_buffer(self, rows: int) -> _Buffer:
        s = self.spec
        return _Buffer(rows, s.num_kv_heads, self.kv.cache_dim(s.head_dim), self.kv.np_dtype)

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

    def append(self, ids: Sequence[int], last_only: bool = False) -> np.ndarray:
        ids = [int(i) for i in ids]
        self._ensure_capacity(self._n + len(ids))
        outs = []
        start = 0
        while start < len(ids):
            chunk = ids[start : start + self._chunk()]
            logits = self._run(chunk, last_only)
            outs.append(logits[-1:] if last_only else logits)
            start += len(chunk)
        if last_only:
            return outs[-1]
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def _run(self, ids: list[int], last_only: bool = False) -> np.ndarray:
        total = self._n + len(ids)
        if self._ones.shape[1] < total:
            self._ones = np.ones((1, max(total, 2 * self._ones.shape[1])), np.int64)
        io = self._binding
        io.bind_cpu_input("input_ids", np.asarray([ids], dtype=np.int64))
        io.bind_cpu_input("attention_mask", self._ones[:, :total])
        if self._can_keep_last:
            io.bind_cpu_input("num_logits_to_keep", self._keep[last_only])
        io.bind_output("logits")  # unallocated again: its shape changes with the chunk length
        self.session.run_with_iobinding(io)
        self._n = total
        return io.get_outputs()[0].numpy()[0]


def _folder_spec(folder: Path) -> ModelSpec:
    """The layer plan the exporter recorded in manifest.json (plain JSON: no transformers import, ~250 MB
    less resident memory for a session); folders from before that record fall back to config.json."""
    record = _manifest(folder).get("spec")
    if isinstance(record, dict):
        import json

        try:
            config = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError):
            config = {}
        try:
            return ModelSpec.from_dict(record, config if isinstance(config, dict) else {})
        except ValueError as e:
            raise ArtifactError(f"manifest.json: {e}", folder) from None
    return read_spec(folder / "config.json")


def _manifest(folder: Path) -> dict:
    import json

    try:
        data = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _manifest_quant(folder: Path) -> str:
    return str(_manifest(folder).get("quant", "f32"))
