"""Where each weight comes from and how it is stored: float (f32 or f16 bytes) or our quantized codes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...model.checkpoint import Checkpoint
from ...quant.model import QuantizedModel
from ...quant.tensor import QuantizedTensor
from .graph import FLOAT, Graph


@dataclass
class Weights:
    """Float tensors come from the checkpoint (never from dequantized codes); quantized ones from `qmodel`.

    `float_dtype` is the storage type of float tensors. Compute is always float32: an f16 tensor is read
    through a Cast that onnxruntime folds at load, so f16 halves the file, not the arithmetic precision.
    """

    ckpt: Checkpoint
    qmodel: QuantizedModel | None = None
    float_dtype: type = np.float32
    accuracy_level: int = 0  # MatMulNBits / QMoE: 0 = float32 activations, 4 = int8 activations

    @property
    def spec(self):
        return self.ckpt.spec

    def quantized(self, name: str) -> QuantizedTensor | None:
        return None if self.qmodel is None else self.qmodel.tensors.get(name)

    def array(self, name: str) -> np.ndarray:
        """The float original (float32 numpy), whatever the storage type."""
        return self.ckpt.canonical(name).numpy()

    def float_input(self, g: Graph, init_name: str, array: np.ndarray) -> str:
        """Store `array` at the float storage type; return a name that reads as float32 in the graph."""
        if self.float_dtype == np.float32:
            return g.weight(init_name, array.astype(np.float32))
        stored = g.weight(init_name, array.astype(self.float_dtype))
        return g.op("Cast", [stored], f"{init_name}/Cast", to=FLOAT)
