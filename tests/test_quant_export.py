"""One GPTQ-quantized model feeds both exporters: each file carries exactly our codes and its runtime
computes our dequantized model (GPTQ's codes and scales, including the clip search's scale choices,
are ordinary Q4_0 / MatMulNBits blocks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qwen2_edge.model.checkpoint import open_checkpoint
from qwen2_edge.quant import QuantScheme, quantize_model
from qwen2_edge.runtimes.reference import ReferenceSession

IDS = [int(t) for t in np.random.default_rng(0).integers(0, 320, size=40)]


@pytest.fixture(scope="module")
def gptq_moe(fixture_dir, tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    ckpt = open_checkpoint(fixture_dir("moe"), need_tokenizer=True)
    q = quantize_model(
        ckpt, QuantScheme(4, 32), "default", method="gptq", calib_tokens=512, seq_len=256, progress=False
    )
    torch.set_num_threads(n)
    deq = ReferenceSession(q.save_dequantized(tmp_path_factory.mktemp("deq") / "deq"))
    return ckpt, q, deq.logits(IDS)


def test_gptq_gguf_q4_0_bytes_and_logits(gptq_moe, tmp_path):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from qwen2_edge.exporters.gguf import export_gguf
    from qwen2_edge.exporters.gguf.names import gguf_name
    from qwen2_edge.exporters.gguf.quants import pack
    from qwen2_edge.runtimes.llamacpp import LlamaCppSession

    ckpt, q, expected = gptq_moe
    assert {t.scheme.bits for t in q.tensors.values()} == {4, 8}
    for name, t in q.tensors.items():
        data, qtype = pack(t)
        assert np.array_equal(dequantize(data, qtype).reshape(t.shape), t.dequantize()), name
    out = export_gguf(ckpt, tmp_path / "m.gguf", "q4_0", qmodel=q).path
    stored = {t.name: t for t in GGUFReader(str(out)).tensors}
    data, qtype = pack(q.tensors["model.layers.0.self_attn.q_proj.weight"])
    assert np.array_equal(np.asarray(stored[gguf_name("model.layers.0.self_attn.q_proj.weight")].data), data)
    with LlamaCppSession(out, threads=2, kv_cache="f32") as s:
        got = s.logits(IDS)
    # llama.cpp rounds activations to 8 bits in its dot products (see test_gguf_export.KERNEL_TOL)
    assert np.abs(got - expected).max() <= 0.06 * expected.std()


def test_gptq_onnx_int4_equals_dequantized(gptq_moe, tmp_path):
    from qwen2_edge.exporters.onnx import export_onnx
    from qwen2_edge.runtimes.onnxruntime import OnnxSession

    ckpt, q, expected = gptq_moe
    out = export_onnx(ckpt, tmp_path / "onnx", "int4", qmodel=q, accuracy_level=0).path
    assert np.abs(OnnxSession(out).logits(IDS) - expected).max() <= 1e-3
