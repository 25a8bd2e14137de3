"""Storage type per tensor and the GGUF file itself (gguf.GGUFWriter)."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from gguf import GGML_QUANT_VERSION, GGMLQuantizationType, GGUFWriter

from ...integrity import GGUF_KEY, gguf_placeholder
from ...progress import Progress
from ...quant.tensor import QuantizedTensor
from .encoding import Encoding, OutTensor
from .quants import BLOCK, GGUFQuant, ggml_type_for, pack, quantize_float
from .rewrite import materialize, to_float
from .tokenizer import GGUFVocab, write_vocab


@dataclass
class Stored:
    data: np.ndarray
    shape: tuple[int, ...]  # float shape (numpy order)
    ggml_type: GGMLQuantizationType
    fallback: str | None = None  # why a matrix stayed float

    @property
    def raw_dtype(self) -> GGMLQuantizationType | None:
        return (
            None if self.ggml_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16) else self.ggml_type
        )


@dataclass
class WritePlan:
    rows: list[dict[str, Any]] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)
    n_elements: int = 0
    data_sha256: str = ""  # of the data section as written (integrity records can use it)


def to_f16(a: np.ndarray) -> np.ndarray:
    """float32 -> float16 through torch (vectorized F16C; numpy's astype was ~40% of an f16 export)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(torch.float16).numpy()


def store(t: OutTensor, gq: GGUFQuant, float_type: GGMLQuantizationType) -> Stored:
    """Decide how one tensor is stored. `float_type` is the type of float matrices in this file."""
    w = t.weight
    shape = tuple(w.shape)
    F32 = GGMLQuantizationType.F32
    if t.role in ("vector", "router") or len(shape) < 2:
        return Stored(to_float(w), shape, F32)
    if gq.maker == "ours":
        if isinstance(w, QuantizedTensor):
            if ggml_type_for(w) is not None:
                data, qt = pack(w)
                return Stored(data, shape, qt)
            # Our codes have no GGUF block layout: store their exact values.
            why = (
                f"block size {w.scheme.block_size} has no GGUF type"
                if w.scheme.block_size != BLOCK
                else f"row length {shape[-1]} is not a multiple of {BLOCK}"
            )
            return Stored(to_float(w), shape, F32, why)
        return Stored(to_float(w), shape, F32)  # kept float by the precision policy (or a rewrite's zeros)
    if gq.maker == "gguf":
        if shape[-1] % BLOCK:
            return Stored(to_float(w), shape, F32, f"row length {shape[-1]} is not a multiple of {BLOCK}")
        qt = GGMLQuantizationType.Q8_0 if t.role in ("embed", "output") else gq.matrix_type
        return Stored(quantize_float(to_float(w), qt), shape, qt)
    if float_type == GGMLQuantizationType.F16:
        return Stored(to_f16(to_float(w)), shape, float_type)
    return Stored(to_float(w), shape, F32)


def write_gguf(
    path: Path,
    enc: Encoding,
    vocab: GGUFVocab,
    kv: list[tuple[str, Any]],
    tensors: Iterable[OutTensor],
    gq: GGUFQuant,
    float_type: GGMLQuantizationType,
    name: str,
    release: Callable[[], None] | None = None,
    progress: str | None = None,
) -> WritePlan:
    """Write the GGUF file streaming: header, metadata and tensor infos first, then each tensor's data as it
    is made (read, rewritten, quantized, packed), written and dropped. `tensors` should carry `Deferred`
    weights so that planning reads nothing; peak memory is then one tensor group (an expert stack) plus a
    fixed overhead, whatever the layer count. `release` is called after each tensor (unmaps the checkpoint
    pages it read). `progress`: a label for the TTY progress line with its ETA.

    Storage types and sizes are only known once a tensor is made (a rewrite can fall back to float), so
    the tensor-info table is first written with placeholder types and offsets and rewritten in place at the
    end: its length depends only on names and ranks. The bytes equal gguf.GGUFWriter's for the same
    tensors (tests/test_gguf_stream.py). `plan.data_sha256` is the SHA-256 of everything after the
    tensor-info table (the aligned data section), hashed as it is written."""
    planned = list(tensors)
    w = GGUFWriter(str(path), enc.arch)
    w.add_name(name)
    w.add_file_type(
        int(gq.file_type) if gq.maker != "llama.cpp" else (1 if float_type == GGMLQuantizationType.F16 else 0)
    )
    if gq.maker in ("ours", "gguf"):
        w.add_quantization_version(GGML_QUANT_VERSION)
    for key, value in kv:
        _add_kv(w, key, value)
    write_vocab(w, vocab)
    # Integrity record: a placeholder of its final length now, the digits once the data is on disk
    # (integrity.seal_gguf; llama.cpp's quantizer copies the key along when it rewrites the file).
    w.add_array(GGUF_KEY, gguf_placeholder(len(planned)))
    for t in planned:  # placeholders: same names and ranks as the real entries, so the same length
        w.add_tensor_info(t.name, t.weight.shape, np.dtype(np.float32), 0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    fout = w.fout[0]
    ti_start = fout.tell()
    w.write_ti_data_to_file()
    ti_end = fout.tell()
    align = w.data_alignment
    digest = hashlib.sha256()
    _write_padded(fout, b"", ti_end, align, None)  # the data section starts aligned (not hashed: header)
    data_start = fout.tell()
    plan = WritePlan()
    bar = Progress(progress, sum(int(np.prod(t.weight.shape)) for t in planned)) if progress else None
    infos: list[tuple[str, tuple[int, ...], GGMLQuantizationType, int]] = []
    for i, t in enumerate(planned):
        s = store(OutTensor(t.name, materialize(t.weight), t.role), gq, float_type)
        planned[i] = None  # drop the plan's reference too (a materialized weight is held nowhere else)
        infos.append((t.name, s.shape, s.ggml_type, fout.tell() - data_start))
        _write_padded(fout, s.data, s.data.nbytes, align, digest)
        plan.n_elements += int(np.prod(s.shape))
        plan.rows.append({"tensor": t.name, "shape": list(s.shape), "type": s.ggml_type.name})
        if s.fallback:
            plan.rows[-1]["note"] = s.fallback
            plan.fallbacks.append(f"{t.name}: {s.fallback}, stored as {s.ggml_type.name}")
        if bar is not None:
            bar.advance(int(np.prod(s.shape)), t.name)
        del s
        if release is not None:
            release()
    ti = _tensor_infos(infos)
    if len(ti) != ti_end - ti_start:  # pragma: no cover - names or ranks changed between plan and data
        raise RuntimeError("GGUF tensor-info table changed length while streaming")
    fout.seek(ti_start)
    fout.write(ti)
    w.close()
    if bar is not None:
        bar.close()
    plan.data_sha256 = digest.hexdigest()
    return plan


def _write_padded(fout: BinaryIO, data, nbytes: int, align: int, digest) -> None:
    """`data` (an array or bytes), then zeros up to the next multiple of `align` (GGUFWriter's layout)."""
    buf = memoryview(np.ascontiguousarray(data)).cast("B") if isinstance(data, np.ndarray) else data
    pad = b"\0" * (-nbytes % align)
    fout.write(buf)
    fout.write(pad)
    if digest is not None:
        digest.update(buf)
        digest.update(pad)


def _tensor_infos(infos: list[tuple[str, tuple[int, ...], GGMLQuantizationType, int]]) -> bytes:
    """The GGUF tensor-info table (little-endian): name, rank, dims innermost first, type, data offset."""
    out = bytearray()
    for name, shape, ggml_type, offset in infos:
        raw = name.encode("utf-8")
        out += struct.pack("<Q", len(raw)) + raw + struct.pack("<I", len(shape))
        out += b"".join(struct.pack("<Q", d) for d in reversed(shape))
        out += struct.pack("<IQ", int(ggml_type), offset)
    return bytes(out)


def _add_kv(w: GGUFWriter, key: str, value: Any) -> None:
    if isinstance(value, bool):
        w.add_bool(key, value)
    elif isinstance(value, int):
        w.add_uint32(key, value)
    elif isinstance(value, float):
        w.add_float32(key, value)
    elif isinstance(value, str):
        w.add_string(key, value)
    elif isinstance(value, list):
        w.add_array(key, value)
    else:  # pragma: no cover - programming error
        raise TypeError(f"{key}: {type(value)}")
