"""ONNX export built directly from the weights with onnxruntime's fused contrib ops.

One small module per op family: attention.py (GroupQueryAttention + rotary caches), norms.py
(SkipSimplifiedLayerNormalization), linear.py (MatMul / MatMulNBits), ffn.py (dense SwiGLU), moe.py
(MoE / QMoE + shared expert), embedding.py (Gather / GatherBlockQuantized, lm_head), pack.py (byte
layouts), decoder.py (the graph), genai_config.py, export.py (the folder).
"""

from .export import export_onnx

__all__ = ["export_onnx"]
