"""Exact weight rewrites, on float arrays and on quantized codes alike.

Each operation is exact by construction: permuting rows, appending rows/columns of zeros, stacking
copies, scaling by a power of two (exact in float16 block scales barring overflow, which is checked).
A quantized tensor stays quantized with the same codes whenever the GGUF block layout allows it.

Every operation also takes a `Deferred` weight (shape known, values not read yet) and returns another
`Deferred` that applies it when materialized: the streaming writer plans every tensor's name and shape
from the encoding first, then reads, rewrites, packs and writes one tensor at a time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ...quant.tensor import QuantizedTensor


@dataclass(frozen=True)
class Deferred:
    """A weight not read yet: its (float) shape and the function that reads and rewrites it."""

    shape: tuple[int, ...]
    make: Callable[[], np.ndarray | QuantizedTensor]

    @property
    def ndim(self) -> int:
        return len(self.shape)


Weight = np.ndarray | QuantizedTensor | Deferred


def materialize(w: Weight) -> np.ndarray | QuantizedTensor:
    return w.make() if isinstance(w, Deferred) else w


def _defer(shape: tuple[int, ...], op: Callable, w: Deferred, *args) -> Deferred:
    return Deferred(tuple(shape), lambda: op(w.make(), *args))


def to_float(w: Weight) -> np.ndarray:
    w = materialize(w)
    return w.dequantize() if isinstance(w, QuantizedTensor) else np.asarray(w, dtype=np.float32)


def _zero_code(q: QuantizedTensor) -> int:
    return q.scheme.mid if q.scheme.symmetric else 0


def permute_rows(w: Weight, perm: np.ndarray) -> Weight:
    """Reorder the output rows (axis -2 of a matrix, axis -1 of a bias)."""
    if isinstance(w, Deferred):
        return _defer(w.shape, permute_rows, w, perm)
    if isinstance(w, QuantizedTensor):
        return dataclasses.replace(
            w, codes=w.codes[..., perm, :], scales=w.scales[..., perm, :], zeros=w.zeros[..., perm, :]
        )
    return w[..., perm, :] if w.ndim >= 2 else w[perm]


def pad_rows(w: Weight, rows: int) -> Weight:
    """Append output rows of zeros up to `rows` (axis -2)."""
    n = w.shape[-2]
    if rows == n:
        return w
    if isinstance(w, Deferred):
        return _defer((*w.shape[:-2], rows, w.shape[-1]), pad_rows, w, rows)
    if isinstance(w, QuantizedTensor):
        extra = rows - n
        lead = w.codes.shape[:-2]
        codes = np.full((*lead, extra, w.codes.shape[-1]), _zero_code(w), np.uint8)
        scales = np.zeros((*lead, extra, w.scales.shape[-1]), np.float16)
        zeros = np.full((*lead, extra, w.zeros.shape[-1]), _zero_code(w), np.uint8)
        return dataclasses.replace(
            w,
            shape=(*w.shape[:-2], rows, w.shape[-1]),
            codes=np.concatenate([w.codes, codes], axis=-2),
            scales=np.concatenate([w.scales, scales], axis=-2),
            zeros=np.concatenate([w.zeros, zeros], axis=-2),
        )
    pad = np.zeros((*w.shape[:-2], rows - n, w.shape[-1]), np.float32)
    return np.concatenate([w, pad], axis=-2)


def pad_cols(w: Weight, cols: int) -> Weight:
    """Append input columns of zeros up to `cols` (axis -1). Quantized: whole zero blocks when the
    layout allows, else the tensor falls back to its float values (still exact)."""
    k = w.shape[-1]
    if cols == k:
        return w
    if isinstance(w, Deferred):
        return _defer((*w.shape[:-1], cols), pad_cols, w, cols)
    if isinstance(w, QuantizedTensor):
        b = w.scheme.block_size
        k_pad = w.codes.shape[-1]
        if cols < k_pad or (cols - k_pad) % b:
            return pad_cols(w.dequantize(), cols)
        # Our quantizer already padded the codes to whole blocks. The padded columns only ever multiply
        # inputs that are exactly 0 (zero rows appended to the layer before), so their codes are irrelevant.
        k = k_pad
        nb = (cols - k) // b
        lead = w.codes.shape[:-1]
        return dataclasses.replace(
            w,
            shape=(*w.shape[:-1], cols),
            codes=np.concatenate([w.codes, np.full((*lead, cols - k), _zero_code(w), np.uint8)], axis=-1),
            scales=np.concatenate([w.scales, np.zeros((*lead, nb), np.float16)], axis=-1),
            zeros=np.concatenate([w.zeros, np.full((*lead, nb), _zero_code(w), np.uint8)], axis=-1),
        )
    pad = np.zeros((*w.shape[:-1], cols - k), np.float32)
    return np.concatenate([w, pad], axis=-1)


def stack_copies(w: Weight, n: int) -> Weight:
    """n identical copies along a new leading axis (a dense FFN as n identical experts)."""
    if isinstance(w, Deferred):
        return _defer((n, *w.shape), stack_copies, w, n)
    if isinstance(w, QuantizedTensor):
        rep = lambda a: np.ascontiguousarray(np.broadcast_to(a, (n, *a.shape)))  # noqa: E731
        return dataclasses.replace(
            w, shape=(n, *w.shape), codes=rep(w.codes), scales=rep(w.scales), zeros=rep(w.zeros)
        )
    return np.ascontiguousarray(np.broadcast_to(w, (n, *w.shape)))


def concat_rows(a: Weight, b: Weight) -> Weight:
    """Rows of `a` then rows of `b` (axis -2): two projections of one input fused into one matrix."""
    if isinstance(a, Deferred) or isinstance(b, Deferred):
        shape = (*a.shape[:-2], a.shape[-2] + b.shape[-2], a.shape[-1])
        return Deferred(shape, lambda: concat_rows(materialize(a), materialize(b)))
    quantized = isinstance(a, QuantizedTensor) and isinstance(b, QuantizedTensor)
    if quantized and a.scheme == b.scheme and a.codes.shape[-1] == b.codes.shape[-1]:
        cat = lambda x, y: np.concatenate([x, y], axis=-2)  # noqa: E731
        return dataclasses.replace(
            a,
            shape=(*a.shape[:-2], a.shape[-2] + b.shape[-2], a.shape[-1]),
            codes=cat(a.codes, b.codes),
            scales=cat(a.scales, b.scales),
            zeros=cat(a.zeros, b.zeros),
        )
    return np.concatenate([to_float(a), to_float(b)], axis=-2)


def scale_pow2(w: Weight, factor: float) -> Weight:
    """Multiply by a power of two: exact for float32 values and for float16 block scales."""
    m, _ = np.frexp(factor)
    if m != 0.5:
        raise ValueError(f"{factor} is not a power of two")
    if factor == 1:
        return w
    if isinstance(w, Deferred):
        return _defer(w.shape, scale_pow2, w, factor)
    if isinstance(w, QuantizedTensor):
        scales = (w.scales.astype(np.float32) * factor).astype(np.float16)
        # overflow, or a halved scale losing bits as a float16 subnormal: keep the exact values instead
        if not np.array_equal(scales.astype(np.float32), w.scales.astype(np.float32) * factor):
            return scale_pow2(w.dequantize(), factor)
        return dataclasses.replace(w, scales=scales)
    out = w * np.float32(factor)
    if not np.isfinite(out).all():
        raise ValueError("scaling overflowed")
    return out


def neox_to_norm_perm(n_heads: int, head_dim: int) -> np.ndarray:
    """Row order that turns rotate-half (NeoX) RoPE pairs (i, i + d/2) into adjacent pairs (2i, 2i + 1).

    Applied to the rows of q_proj and k_proj (and their biases), llama.cpp's "normal" RoPE on the new rows
    rotates exactly the pairs Qwen2 rotates, with the same frequency; q.k per head is unchanged because
    both sides are permuted alike.
    """
    half = head_dim // 2
    within = np.stack([np.arange(half), np.arange(half) + half], axis=1).reshape(-1)
    return (np.arange(n_heads)[:, None] * head_dim + within[None, :]).reshape(-1)
