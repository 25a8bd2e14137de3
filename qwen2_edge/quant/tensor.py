"""QuantizedTensor: integer codes + float16 scales (+ integer zero points), blocked along the last axis.

Exporters pack these same numbers into their own byte layouts (GGUF Q8_0/Q4_0/Q4_1, ONNX MatMulNBits),
so both formats carry bit-identical weights and runtime differences are the runtimes' own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from .scheme import QuantScheme


@dataclass
class QuantizedTensor:
    name: str
    shape: tuple[int, ...]  # float shape; last axis = input features K
    scheme: QuantScheme
    codes: np.ndarray  # uint8 [..., K_padded], in [0, 2**bits)
    scales: np.ndarray  # float16 [..., n_blocks]
    zeros: np.ndarray  # uint8 [..., n_blocks]; == scheme.mid everywhere when symmetric

    @property
    def k(self) -> int:
        return self.shape[-1]

    @property
    def n_blocks(self) -> int:
        return self.scales.shape[-1]

    @property
    def padded(self) -> bool:
        return self.codes.shape[-1] != self.k

    def dequantize(self) -> np.ndarray:
        """float32 values in the original shape (padding dropped)."""
        b = self.scheme.block_size
        codes = self.codes.astype(np.float32).reshape(*self.codes.shape[:-1], self.n_blocks, b)
        z = self.zeros.astype(np.float32)[..., None]
        s = self.scales.astype(np.float32)[..., None]
        out = ((codes - z) * s).reshape(self.codes.shape)
        return np.ascontiguousarray(out[..., : self.k])

    @property
    def nbytes_packed(self) -> int:
        return packed_nbytes(self.shape, self.scheme)


def packed_nbytes(shape: tuple[int, ...], scheme: QuantScheme) -> int:
    """Bytes of codes, float16 scales and (asymmetric) zero points of a tensor of float `shape`, computed
    from the shape alone (the last axis padded to whole blocks)."""
    b = scheme.block_size
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    k_pad = shape[-1] + (-shape[-1]) % b
    n_blocks = rows * (k_pad // b)
    n = rows * k_pad * scheme.bits // 8 + n_blocks * 2
    return n + (0 if scheme.symmetric else n_blocks * scheme.bits // 8)


def check_finite(name: str, w: np.ndarray) -> None:
    if not np.isfinite(w).all():
        bad = int((~np.isfinite(w)).sum())
        raise UserError(f"tensor {name!r} has {bad} NaN/Inf value(s); refusing to quantize it")


def check_scales(name: str, w: np.ndarray, scales: np.ndarray) -> None:
    """Block scales are float16 in every target format; a weight so large its scale overflows is refused."""
    if not np.isfinite(scales.astype(np.float32)).all():
        raise UserError(
            f"tensor {name!r} has a value too large for float16 block scales (max |w| = {np.abs(w).max():.3g})"
        )


def pad_blocks(w: np.ndarray, block: int) -> np.ndarray:
    k = w.shape[-1]
    pad = (-k) % block
    if pad:
        w = np.concatenate([w, np.zeros((*w.shape[:-1], pad), dtype=w.dtype)], axis=-1)
    return w


def round_scale_for_zero_point(scale: np.ndarray) -> np.ndarray:
    """float16 scales with at most 7 significant bits, so that zero * scale (zero < 16) is exact in float16.

    This makes (code - zero) * scale == code * scale + min with min = -zero * scale stored as float16,
    i.e. an asymmetric int4 block is bit-identical in MatMulNBits and in GGUF Q4_1 (relative scale
    change <= 2**-7, small against the 4-bit step of 1/15). The mantissa is rounded UP so the block's
    [min, max] range stays covered (round-to-nearest could shrink it and clip the maximum, ~1 step at 8 bits)."""
    s = scale.astype(np.float32)
    m, e = np.frexp(s)
    m = np.ceil(m * 128) / 128
    return np.ldexp(m, e).astype(np.float16)


def quantize_blocks(
    w: np.ndarray, scheme: QuantScheme, scale: np.ndarray | None = None, zero: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes, scales, zeros for w [..., n_blocks, block] (already padded and reshaped).

    Given `scale`/`zero` (from a search such as GPTQ's clipping) they are used; otherwise round-to-nearest
    parameters: symmetric scale = signed absmax / -mid (GGUF Q4_0 / Q8_0 convention), asymmetric from min/max.
    """
    w = w.astype(np.float32)
    mid, top = scheme.mid, scheme.levels - 1
    if scale is None:
        with np.errstate(over="ignore"):  # an overflowing float16 scale is reported by check_scales
            if scheme.symmetric:
                if scheme.bits == 8:
                    amax = np.abs(w).max(axis=-1)
                    scale = (amax / 127.0).astype(np.float16)  # Q8_0: d = amax / 127
                else:
                    idx = np.abs(w).argmax(axis=-1)
                    signed_max = np.take_along_axis(w, idx[..., None], axis=-1)[..., 0]
                    scale = (signed_max / -mid).astype(np.float16)  # Q4_0: d = max / -8
                zero = np.full(scale.shape, mid, dtype=np.uint8)
            else:
                lo = np.minimum(w.min(axis=-1), 0.0)
                hi = np.maximum(w.max(axis=-1), 0.0)
                scale = round_scale_for_zero_point((hi - lo) / top)
                s32 = scale.astype(np.float32)
                safe = np.where(s32 == 0, 1.0, s32)
                zero = np.clip(np.round(-lo / safe), 0, top).astype(np.uint8)
    s32 = scale.astype(np.float32)[..., None]
    inv = np.where(s32 == 0, 0.0, 1.0 / np.where(s32 == 0, 1.0, s32))
    codes = np.clip(np.round(w * inv) + zero.astype(np.float32)[..., None], 0, top).astype(np.uint8)
    return codes, scale.astype(np.float16), zero.astype(np.uint8)


ROWS_PER_CHUNK = (
    4096  # bounds the float32 temporaries of quantize_blocks (a 151936-row embedding: 4-5x its size)
)


def quantize_rtn(name: str, w: np.ndarray, scheme: QuantScheme) -> QuantizedTensor:
    """Round-to-nearest block quantization of a float tensor [..., K], a few thousand rows at a time."""
    w = np.asarray(w, dtype=np.float32)
    check_finite(name, w)
    b = scheme.block_size
    k = w.shape[-1]
    k_pad = k + (-k) % b
    rows = w.reshape(-1, k)
    codes = np.empty((rows.shape[0], k_pad), dtype=np.uint8)
    scales = np.empty((rows.shape[0], k_pad // b), dtype=np.float16)
    zeros = np.empty((rows.shape[0], k_pad // b), dtype=np.uint8)
    for i in range(0, rows.shape[0], ROWS_PER_CHUNK):
        part = pad_blocks(rows[i : i + ROWS_PER_CHUNK], b)
        c, s_, z = quantize_blocks(part.reshape(part.shape[0], k_pad // b, b), scheme)
        codes[i : i + len(part)] = c.reshape(len(part), k_pad)
        scales[i : i + len(part)], zeros[i : i + len(part)] = s_, z
    lead = w.shape[:-1]
    scales, zeros = scales.reshape(*lead, -1), zeros.reshape(*lead, -1)
    check_scales(name, w, scales)
    return QuantizedTensor(name, tuple(w.shape), scheme, codes.reshape(*lead, k_pad), scales, zeros)
