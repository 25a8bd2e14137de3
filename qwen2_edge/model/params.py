"""Parameter counts (total, and active per token for MoE) and file-size estimates, from the spec alone."""

from __future__ import annotations

from dataclasses import dataclass

from .layout import expected_tensors
from .spec import ModelSpec, MoEFFN

# Estimated storage bits per weight of 2-D matrices; 1-D tensors (norms, biases) stay f32.
SIZE_ESTIMATES = {"f16": 16.0, "int8": 8.5, "int4": 4.5}  # int8/int4: block 32 + one f16 scale


@dataclass(frozen=True)
class ParamCount:
    total: int
    active: int  # parameters touched per token: routed experts count top_k of num_experts
    embedding: int
    matrix: int  # elements of 2-D tensors (what quantization applies to)
    vector: int

    def file_bytes(self, kind: str) -> int:
        return int(self.matrix * SIZE_ESTIMATES[kind] / 8 + self.vector * 4)


def count_params(spec: ModelSpec) -> ParamCount:
    shapes = expected_tensors(spec)
    total = matrix = vector = 0
    for shape in shapes.values():
        n = 1
        for d in shape:
            n *= d
        total += n
        if len(shape) >= 2:
            matrix += n
        else:
            vector += n
    inactive = 0
    for layer in spec.layers:
        if isinstance(layer.ffn, MoEFFN):
            f = layer.ffn
            inactive += (f.num_experts - f.top_k) * 3 * f.expert_intermediate * spec.hidden_size
    return ParamCount(total, total - inactive, spec.vocab_size * spec.hidden_size, matrix, vector)
