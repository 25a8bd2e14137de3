"""Quantization: schemes, quantized tensors, methods (rtn, gptq), policies. One result feeds every exporter."""

from .model import QuantizedModel, quantize_model
from .policy import POLICIES, QuantPolicy
from .scheme import QuantScheme, parse_scheme
from .tensor import QuantizedTensor, quantize_rtn

__all__ = [
    "POLICIES",
    "QuantPolicy",
    "QuantScheme",
    "QuantizedModel",
    "QuantizedTensor",
    "parse_scheme",
    "quantize_model",
    "quantize_rtn",
]
