"""Pack our QuantizedTensor codes into onnxruntime's MatMulNBits / QMoE / GatherBlockQuantized byte layouts.

No re-quantization happens here: the bytes hold exactly the codes, float16 scales (widened to float32,
which is exact) and zero points of the quantization library, so the runtime computes with the same
dequantized weights as `QuantizedModel.save_dequantized`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...quant.tensor import QuantizedTensor


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint8 codes along the last axis -> bytes, low-order bits first (the layout all three ops read)."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    if bits == 8:
        return codes
    if bits != 4:
        raise ValueError(f"cannot pack {bits}-bit codes")
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros((*codes.shape[:-1], 1), np.uint8)], axis=-1)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


@dataclass
class PackedNBits:
    """One quantized matrix (or stack of expert matrices) in MatMulNBits terms."""

    bits: int
    block_size: int
    k: int  # logical input features
    n: int  # output features
    blocks: np.ndarray  # uint8 [..., N, k_blocks, block_size * bits / 8]
    scales: np.ndarray  # float32 [..., N, k_blocks]
    zeros: np.ndarray | None  # uint8 [..., N, ceil(k_blocks * bits / 8)] packed; None when symmetric

    @property
    def flat_blocks(self) -> np.ndarray:
        """[..., N, K_pad * bits / 8]: the QMoE / GatherBlockQuantized view of the same bytes."""
        return self.blocks.reshape(*self.blocks.shape[:-2], -1)


def pack_nbits(q: QuantizedTensor) -> PackedNBits:
    s = q.scheme
    nb = q.n_blocks
    lead = q.codes.shape[:-1]
    blocks = pack_bits(q.codes.reshape(*lead, nb, s.block_size), s.bits)
    zeros = None if s.symmetric else pack_bits(q.zeros, s.bits)
    return PackedNBits(s.bits, s.block_size, q.k, int(lead[-1]), blocks, q.scales.astype(np.float32), zeros)


def concat_rows(parts: list[QuantizedTensor]) -> QuantizedTensor:
    """Several matrices with one scheme stacked along the output axis (packed QKV, packed gate/up)."""
    first = parts[0]
    if any(p.scheme != first.scheme or p.k != first.k for p in parts):
        raise ValueError("cannot pack matrices with different schemes")
    rows = sum(p.shape[-2] for p in parts)
    return QuantizedTensor(
        "+".join(p.name for p in parts),
        (*first.shape[:-2], rows, first.k),
        first.scheme,
        np.concatenate([p.codes for p in parts], axis=-2),
        np.concatenate([p.scales for p in parts], axis=-2),
        np.concatenate([p.zeros for p in parts], axis=-2),
    )


def interleave_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[..., I, X] and [..., I, X] -> [..., 2I, X] with rows a0, b0, a1, b1, ... (fused SwiGLU layout)."""
    return np.stack([a, b], axis=-2).reshape(*a.shape[:-2], 2 * a.shape[-2], a.shape[-1])


def interleave_quantized(gate: QuantizedTensor, up: QuantizedTensor) -> QuantizedTensor:
    if gate.scheme != up.scheme:
        raise ValueError("gate and up experts must share a scheme to fuse them")
    return QuantizedTensor(
        gate.name + "+" + up.name,
        (*gate.shape[:-2], 2 * gate.shape[-2], gate.k),
        gate.scheme,
        interleave_rows(gate.codes, up.codes),
        interleave_rows(gate.scales, up.scales),
        interleave_rows(gate.zeros, up.zeros),
    )


def pad_output_rows(q: QuantizedTensor, rows: int) -> QuantizedTensor:
    """Append all-zero output rows (code = zero point, scale 0: they dequantize to exactly 0)."""
    extra = rows - q.shape[-2]
    if extra <= 0:
        return q

    def pad(a: np.ndarray, fill) -> np.ndarray:
        width = [(0, 0)] * a.ndim
        width[-2] = (0, extra)
        return np.pad(a, width, constant_values=fill)

    return QuantizedTensor(
        q.name,
        (*q.shape[:-2], rows, q.k),
        q.scheme,
        pad(q.codes, q.scheme.mid),
        pad(q.scales, 0),
        pad(q.zeros, q.scheme.mid),
    )
