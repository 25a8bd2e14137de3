"""ONNX export built directly from the weights with onnxruntime's fused contrib ops.

One small module per op family: attention.py (GroupQueryAttention + rotary caches), norms.py
(SkipSimplifiedLayerNormalization), linear.py (MatMul / MatMulNBits), ffn.py (dense SwiGLU), moe.py
(MoE / QMoE + shared expert), embedding.py (Gather / GatherBlockQuantized, lm_head), pack.py (byte
layouts), decoder.py (the graph), kv_cache.py (the KV-cache contract the runtimes read), genai_config.py,
export.py (the folder).
"""

from __future__ import annotations

__all__ = ["export_onnx"]


def __getattr__(name: str):
    # Lazy: the onnxruntime session imports kv_cache.py from here and must not pull in the quantizer/torch.
    if name == "export_onnx":
        from .export import export_onnx

        return export_onnx
    raise AttributeError(name)
