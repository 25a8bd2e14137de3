"""Storage type per tensor and the GGUF file itself (gguf.GGUFWriter)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_VERSION, GGMLQuantizationType, GGUFWriter

from ...integrity import GGUF_KEY, gguf_placeholder
from ...quant.tensor import QuantizedTensor
from ..estimate import SPILL
from .encoding import Encoding, OutTensor
from .quants import BLOCK, GGUFQuant, ggml_type_for, pack, quantize_float
from .rewrite import to_float
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
    tensors,
    gq: GGUFQuant,
    float_type: GGMLQuantizationType,
    name: str,
) -> WritePlan:
    w = GGUFWriter(str(path), enc.arch, use_temp_file=True)
    # gguf spills tensor data over 256 MiB to a temporary file in the system temp folder; put it beside the
    # output instead, where the free-space check counted it and a write error names the output (and close
    # it on failure: an unnamed temporary holds its space until closed).
    with tempfile.SpooledTemporaryFile(mode="w+b", max_size=SPILL, dir=path.parent) as spill:
        w.temp_file = spill
        w.add_name(name)
        w.add_file_type(
            int(gq.file_type) if gq.maker != "llama.cpp" else (1 if float_type == GGMLQuantizationType.F16 else 0)
        )
        if gq.maker in ("ours", "gguf"):
            w.add_quantization_version(GGML_QUANT_VERSION)
        for key, value in kv:
            _add_kv(w, key, value)
        write_vocab(w, vocab)
        plan = WritePlan()
        for t in tensors:
            s = store(t, gq, float_type)
            # Quantized data goes in as uint8 rows of blocks; gguf derives the element shape from the byte shape.
            w.add_tensor(t.name, s.data, raw_dtype=s.raw_dtype)
            plan.n_elements += int(np.prod(s.shape))
            plan.rows.append({"tensor": t.name, "shape": list(s.shape), "type": s.ggml_type.name})
            if s.fallback:
                plan.rows[-1]["note"] = s.fallback
                plan.fallbacks.append(f"{t.name}: {s.fallback}, stored as {s.ggml_type.name}")
        # Integrity record: a placeholder of its final length now, the digits once the data is on disk
        # (integrity.seal_gguf; llama.cpp's quantizer copies the key along when it rewrites the file).
        w.add_array(GGUF_KEY, gguf_placeholder(len(plan.rows)))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return plan


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
