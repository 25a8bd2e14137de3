"""Streaming GGUF export: byte-identical to the buffered writer it replaced, on every fixture and quant type.

The oracle below is the pre-streaming export kept verbatim in spirit: the whole model quantized first
(eager RTN), every tensor materialized by the encoding and handed to gguf.GGUFWriter.add_tensor, which
buffers the data and writes it after the header. Guards the streaming writer's placeholder tensor-info
table (rewritten in place at the end), its offsets and padding, and the deferred rewrites (padding,
permutations, stacked copies, power-of-two scaling) against any drift from that layout.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFWriter

from qwen2_edge.errors import UnsupportedError
from qwen2_edge.exporters.api import export_model
from qwen2_edge.exporters.gguf import QUANTS, llama_quantize
from qwen2_edge.exporters.gguf.encoding import choose_encoding
from qwen2_edge.exporters.gguf.rewrite import Deferred, materialize
from qwen2_edge.exporters.gguf.tokenizer import build_vocab, write_vocab
from qwen2_edge.exporters.gguf.writer import _add_kv, store
from qwen2_edge.exporters.registry import get_format
from qwen2_edge.integrity import GGUF_KEY, gguf_placeholder, seal_gguf
from qwen2_edge.model.checkpoint import open_checkpoint
from qwen2_edge.quant import quantize_model
from qwen2_edge.testing import FIXTURES, FixtureSpec, make_checkpoint


def buffered_gguf(model: Path, out: Path, quant: str) -> None:
    """The export as it was before streaming (the parity oracle)."""
    from gguf import GGML_QUANT_VERSION

    ckpt = open_checkpoint(model, need_tokenizer=True)
    gq = QUANTS[quant]
    enc = choose_encoding(
        ckpt.spec,
        str(ckpt.path),
        ffn_multiple=1 if gq.maker == "float" else 32,
        weights=lambda n: ckpt.canonical(n).numpy(),
    )
    qmodel = quantize_model(ckpt, get_format("gguf").scheme(quant)) if gq.maker == "ours" else None
    assert qmodel is None or isinstance(qmodel.tensors, dict)  # eager: the old path

    def get(name):
        if qmodel is not None and name in qmodel.tensors:
            return qmodel.tensors[name]
        return ckpt.canonical(name).numpy()

    def write(path: Path, float_type) -> None:
        w = GGUFWriter(str(path), enc.arch, use_temp_file=True)
        w.add_name(ckpt.path.name)
        w.add_file_type(
            int(gq.file_type)
            if gq.maker != "llama.cpp"
            else (1 if float_type == GGMLQuantizationType.F16 else 0)
        )
        if gq.maker in ("ours", "gguf"):
            w.add_quantization_version(GGML_QUANT_VERSION)
        for key, value in enc.metadata():
            _add_kv(w, key, value)
        write_vocab(w, build_vocab(ckpt))
        tensors = list(enc.tensors(get))
        for t in tensors:
            s = store(t, gq, float_type)
            w.add_tensor(t.name, s.data, raw_dtype=s.raw_dtype)
        w.add_array(GGUF_KEY, gguf_placeholder(len(tensors)))  # the integrity record, sealed below
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    if gq.maker == "llama.cpp":
        with tempfile.TemporaryDirectory(dir=out.parent) as d:
            write(Path(d) / "f16.gguf", GGMLQuantizationType.F16)
            llama_quantize(Path(d) / "f16.gguf", out, gq.llama_ftype, 2)
    else:
        write(out, GGMLQuantizationType.F16 if quant == "f16" else GGMLQuantizationType.F32)
    seal_gguf(out)


def _assert_same_bytes(model: Path, quant: str, tmp_path: Path) -> None:
    try:
        buffered_gguf(model, tmp_path / "old.gguf", quant)
    except UnsupportedError:
        with pytest.raises(UnsupportedError):
            export_model(model, "gguf", quant, tmp_path / "new.gguf")
        return
    res = export_model(model, "gguf", quant, tmp_path / "new.gguf")
    old, new = (tmp_path / "old.gguf").read_bytes(), (tmp_path / "new.gguf").read_bytes()
    assert len(new) == len(old)
    assert new == old, f"first differing byte {np.argmax(np.frombuffer(old, np.uint8) != np.frombuffer(new, np.uint8))}"
    assert res.bytes == len(old)


@pytest.mark.parametrize("name", list(FIXTURES))
@pytest.mark.parametrize("quant", ["f32", "f16", "q8_0", "q4_0", "q4_1", "q5_0"])
def test_streaming_gguf_is_byte_identical(name, quant, fixture_dir, tmp_path):
    _assert_same_bytes(fixture_dir(name), quant, tmp_path)


@pytest.mark.parametrize("name", ["dense", "moe"])
def test_streaming_k_quant_is_byte_identical(name, fixture_dir, tmp_path):
    """K-quants: llama.cpp quantizes the streamed f16 file; same f16 bytes in, same file out."""
    _assert_same_bytes(fixture_dir(name), "q4_k_m", tmp_path)


@pytest.mark.parametrize("quant", ["q8_0", "q4_1"])
def test_streaming_fallbacks_are_byte_identical(quant, tmp_path):
    """Rows not a multiple of 32 (float fallback) and an FFN width padded to 32 (deferred pad_rows/pad_cols)."""
    spec = FixtureSpec(hidden=48, heads=4, kv_heads=2, intermediate=72, seed=11)
    _assert_same_bytes(make_checkpoint(spec, tmp_path / "ckpt"), quant, tmp_path)


def test_deferred_rewrites_plan_shapes_without_reading():
    """Planning a tensor reads nothing: the encoding's rewrites compose, and the shape is known up front."""
    from qwen2_edge.exporters.gguf import rewrite

    reads = []
    w = np.arange(6 * 64, dtype=np.float32).reshape(6, 64)

    def make():
        reads.append(1)
        return w

    d = Deferred((6, 64), make)
    out = rewrite.scale_pow2(rewrite.stack_copies(rewrite.pad_cols(rewrite.pad_rows(d, 8), 96), 3), 2.0)
    assert isinstance(out, Deferred) and out.shape == (3, 8, 96) and not reads
    eager = rewrite.scale_pow2(rewrite.stack_copies(rewrite.pad_cols(rewrite.pad_rows(w, 8), 96), 3), 2.0)
    np.testing.assert_array_equal(materialize(out), eager)
    assert len(reads) == 1
