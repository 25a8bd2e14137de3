"""GGUF export for llama.cpp: names, metadata, tokenizer, exact encodings, quant packing, the writer.

`export_gguf` is the registry target (exporters/registry.py, format "gguf").
"""

from __future__ import annotations

import ctypes
import functools
import os
import tempfile
from pathlib import Path

from gguf import GGMLQuantizationType

from ...errors import UserError
from ...fsutil import atomic_file
from ...integrity import seal_gguf
from ...model.checkpoint import Checkpoint
from ...quant.model import QuantizedModel
from ..registry import ExportResult
from .encoding import choose_encoding
from .quants import QUANTS
from .rewrite import Deferred
from .tokenizer import build_vocab
from .writer import write_gguf

__all__ = ["QUANTS", "check_gguf", "export_gguf"]


def check_gguf(ckpt: Checkpoint, quant: str) -> None:
    """Refuse, before any quantization work, a model no llama.cpp architecture computes exactly."""
    choose_encoding(ckpt.spec, str(ckpt.path), weights=lambda n: ckpt.canonical(n).numpy())


def export_gguf(
    ckpt: Checkpoint,
    out: Path,
    quant: str,
    qmodel: QuantizedModel | None = None,
    force: bool = False,
    threads: int | None = None,
) -> ExportResult:
    """Write `out` (.gguf) holding `ckpt` at `quant`; refuses anything llama.cpp would compute differently."""
    if quant not in QUANTS:
        raise UserError(f"the gguf format cannot hold quant type {quant!r} (choose from {', '.join(QUANTS)})")
    gq = QUANTS[quant]
    out = Path(out)
    enc = choose_encoding(
        ckpt.spec,
        str(ckpt.path),
        ffn_multiple=1 if gq.maker == "float" else 32,
        weights=lambda n: ckpt.canonical(n).numpy(),  # some MoE encodings depend on values (encoding.py)
    )
    if gq.maker == "ours" and qmodel is None:
        from ...quant import quantize_model
        from ..registry import get_format

        qmodel = quantize_model(ckpt, get_format("gguf").scheme(quant), lazy=True)
    vocab = build_vocab(ckpt)

    def value(name: str):
        if qmodel is not None and gq.maker == "ours" and name in qmodel.tensors:
            return qmodel.tensors[name]  # quantized now when qmodel is lazy (streaming RTN)
        return ckpt.canonical(name).numpy()

    def get(name: str) -> Deferred:  # read when the writer reaches it, not when the encoding plans it
        return Deferred(ckpt.canonical_shape(name), lambda: value(name))

    kv = enc.metadata()
    name = ckpt.path.name
    write = functools.partial(write_gguf, release=ckpt.release, progress=f"gguf {quant} export")
    with atomic_file(out, force) as tmp:
        if gq.maker == "llama.cpp":
            with tempfile.TemporaryDirectory(prefix=".gguf-f16-", dir=out.parent) as d:
                f16 = Path(d) / "model-f16.gguf"
                plan = write(f16, enc, vocab, kv, enc.tensors(get), gq, GGMLQuantizationType.F16, name)
                llama_quantize(f16, tmp, gq.llama_ftype, threads)
        else:
            ftype = GGMLQuantizationType.F16 if quant == "f16" else GGMLQuantizationType.F32
            plan = write(tmp, enc, vocab, kv, enc.tensors(get), gq, ftype, name)
        seal_gguf(tmp)
    if gq.maker == "llama.cpp":  # report the types llama.cpp actually chose, not the f16 input's
        plan.rows = stored_types(out)
    size = out.stat().st_size
    notes = list(enc.notes) + plan.fallbacks
    if vocab.n_placeholders:
        notes.append(f"{vocab.n_placeholders} embedding rows beyond the tokenizer written as [PAD] tokens")
    if gq.maker == "llama.cpp":
        notes.append(f"{quant} made by llama.cpp's llama_model_quantize from an f16 GGUF written first")
    return ExportResult(
        path=out,
        format="gguf",
        quant=quant,
        bytes=size,
        bits_per_weight=8 * size / max(plan.n_elements, 1),
        seconds=0.0,
        plan=plan.rows,
        notes=notes,
    )


def stored_types(path: Path) -> list[dict]:
    from gguf import GGUFReader

    return [
        {"tensor": t.name, "shape": [int(x) for x in reversed(t.shape)], "type": t.tensor_type.name}
        for t in GGUFReader(str(path)).tensors
    ]


def llama_quantize(src: Path, dst: Path, ftype: int, threads: int | None) -> None:
    """llama.cpp's own quantizer (K-quants), through llama-cpp-python's C API."""
    import llama_cpp

    from ...runtimes.llamacpp import quiet_llama_logs

    quiet_llama_logs()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads or os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise UserError(f"llama.cpp's quantizer failed (code {rc}) on the intermediate f16 file", dst)
