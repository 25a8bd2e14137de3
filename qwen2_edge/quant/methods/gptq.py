"""GPTQ for one weight matrix: quantize column by column, compensating each column's rounding error on
the not-yet-quantized columns through the inverse Hessian of the layer's calibration inputs.

Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers" (2022):
H = X^T X over calibration inputs, damped; columns processed in lazy batches (the error of a batch is
applied to the rest of the matrix in one matmul); optional act-order (columns by decreasing H_jj).

Block parameters follow QuantScheme's conventions exactly (float16 scale, integer zero; symmetric int4 is
GGUF Q4_0's `d = max / -8`), so the result is an ordinary QuantizedTensor that GGUF Q4_0/Q4_1/Q8_0 and
ONNX MatMulNBits carry bit for bit. Each block's scale is chosen when GPTQ reaches the block's first
column, from the error-updated weights; with act-order the blocks are fixed up front from the original
weights, because a block must be contiguous along K to be representable in those formats.
"""

from __future__ import annotations

import numpy as np
import torch

from ...errors import UserError
from ..scheme import QuantScheme
from ..tensor import QuantizedTensor, check_finite, check_scales, round_scale_for_zero_point

# Scale multipliers tried per block (the largest-magnitude weight may be clipped if that lowers the
# H_jj-weighted squared error of the block). 1.0 alone = plain round-to-nearest block parameters.
CLIP_GRID = tuple(1.0 - 0.025 * i for i in range(13))  # 1.0 .. 0.7
LAZY_BATCH = 128  # a multiple of every block size, so a block never straddles two lazy batches


def _codes(w: torch.Tensor, s32: torch.Tensor, z: torch.Tensor, top: int) -> torch.Tensor:
    """Integer codes for w [R, ...] with per-row scale s32 [R, 1] and zero z [R, 1] (float32), as tensor.py rounds."""
    inv = torch.where(s32 == 0, torch.zeros_like(s32), 1.0 / torch.where(s32 == 0, torch.ones_like(s32), s32))
    return torch.clamp(torch.round(w * inv) + z, 0, top)


def block_params(
    w: torch.Tensor, scheme: QuantScheme, col_weight: torch.Tensor | None = None, grid=(1.0,)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (float16 scale, uint8 zero) for one block w [R, b].

    Candidates are the round-to-nearest parameters of tensor.quantize_blocks scaled by each factor in
    `grid` (for symmetric int4 also with the largest weight mapped to +7 instead of -8); the candidate
    with the smallest col_weight-weighted squared error wins, per row.
    """
    w = w.float()
    R = w.shape[0]
    top, mid = scheme.levels - 1, scheme.mid
    cands: list[tuple[torch.Tensor, torch.Tensor]] = []  # (scale fp16 [R], zero float [R])
    if scheme.symmetric:
        zero = torch.full((R,), float(mid))
        if scheme.bits == 8:
            bases = [w.abs().amax(dim=1) / 127.0]
        else:
            idx = w.abs().argmax(dim=1, keepdim=True)
            smax = torch.gather(w, 1, idx)[:, 0]
            bases = [smax / -mid] + ([smax / (mid - 1)] if len(grid) > 1 else [])
        cands = [((b * f).half(), zero) for b in bases for f in grid]
    else:
        lo = torch.clamp(w.amin(dim=1), max=0.0)
        hi = torch.clamp(w.amax(dim=1), min=0.0)
        for f in grid:
            s = torch.from_numpy(round_scale_for_zero_point(((hi - lo) * f / top).numpy()))
            s32 = s.float()
            z = torch.clamp(torch.round(-lo * f / torch.where(s32 == 0, 1.0, s32)), 0, top)
            cands.append((s, z))
    if len(cands) == 1:
        s, z = cands[0]
        return s, z.to(torch.uint8)
    cw = torch.ones(w.shape[1]) if col_weight is None else col_weight.float()
    best_err = torch.full((R,), float("inf"))
    best_s = cands[0][0].clone()
    best_z = cands[0][1].clone()
    for s, z in cands:
        s32, zc = s.float()[:, None], z[:, None]
        q = _codes(w, s32, zc, top)
        err = (((q - zc) * s32 - w) ** 2 * cw).sum(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_s = torch.where(better, s, best_s)
        best_z = torch.where(better, z, best_z)
    return best_s, best_z.to(torch.uint8)


def _inverse_hessian_factor(H: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1; damping grows until H is positive definite."""
    K = H.shape[0]
    mean_diag = float(torch.diag(H).mean()) or 1.0
    for attempt in range(6):
        Hd = H + (damp * 10**attempt) * mean_diag * torch.eye(K, dtype=H.dtype)
        L, info = torch.linalg.cholesky_ex(Hd)
        if int(info) == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if int(info) == 0:
                return U.float()
    return torch.eye(K)  # degenerate statistics: no error compensation (= round-to-nearest)


class _single_thread:
    """The column loop is thousands of tiny tensor ops; intra-op threads only add synchronization cost."""

    def __enter__(self) -> None:
        self.n = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self.n)


@torch.no_grad()
def gptq_quantize(
    name: str,
    weight,
    hessian: torch.Tensor,
    scheme: QuantScheme,
    *,
    damp: float = 0.01,
    act_order: bool = False,
    clip_grid=CLIP_GRID,
) -> QuantizedTensor:
    """GPTQ-quantize weight [R, K] given H = sum of x x^T over calibration inputs x [K] (any positive scale)."""
    with _single_thread():
        return _gptq(name, weight, hessian, scheme, damp, act_order, clip_grid)


def _gptq(
    name, weight, hessian, scheme: QuantScheme, damp: float, act_order: bool, clip_grid
) -> QuantizedTensor:
    w_np = np.asarray(weight, dtype=np.float32)
    check_finite(name, w_np)
    R, K = w_np.shape
    b = scheme.block_size
    Kp = -(-K // b) * b
    nb = Kp // b
    top = scheme.levels - 1
    # Padding columns are zero weights with zero inputs: they quantize to exactly 0 and never move.
    W = torch.zeros(R, Kp)
    W[:, :K] = torch.from_numpy(w_np)
    H = torch.zeros(Kp, Kp, dtype=torch.float64)
    H[:K, :K] = torch.as_tensor(hessian, dtype=torch.float64)
    if not torch.isfinite(H).all():
        raise UserError(
            f"tensor {name!r}: calibration activations are not finite (the float model overflowed)"
        )
    diag = torch.diag(H).clone()
    # Inputs never active in calibration: decouple them (H_jj = 1, no cross terms), i.e. plain rounding.
    dead = diag == 0
    H[dead, :] = 0
    H[:, dead] = 0
    H[dead, dead] = 1.0
    col_weight = torch.where(
        dead, torch.full_like(diag, float(diag[~dead].mean()) if (~dead).any() else 1.0), diag
    )
    col_weight = col_weight.float()

    scales = torch.zeros(R, nb, dtype=torch.float16)
    zeros = torch.zeros(R, nb, dtype=torch.uint8)
    if act_order:
        for blk in range(nb):  # fixed up front: blocks stay contiguous along K in the original order
            sl = slice(blk * b, (blk + 1) * b)
            scales[:, blk], zeros[:, blk] = block_params(W[:, sl], scheme, col_weight[sl], clip_grid)
        perm = torch.argsort(torch.diag(H), descending=True)
    else:
        perm = torch.arange(Kp)
    W = W[:, perm]
    U = _inverse_hessian_factor(H[perm][:, perm], damp)

    codes = torch.zeros(R, Kp, dtype=torch.uint8)
    s32 = z32 = None
    for i1 in range(0, Kp, LAZY_BATCH):
        i2 = min(i1 + LAZY_BATCH, Kp)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            orig = int(perm[col])
            blk = orig // b
            if not act_order and col % b == 0:
                sl = slice(i, i + b)
                scales[:, blk], zeros[:, blk] = block_params(
                    W1[:, sl], scheme, col_weight[col : col + b], clip_grid
                )
            if act_order or col % b == 0:
                s32 = scales[:, blk].float()
                z32 = zeros[:, blk].float()
            w = W1[:, i]
            q = _codes(w[:, None], s32[:, None], z32[:, None], top)[:, 0]
            codes[:, orig] = q.to(torch.uint8)
            err = (w - (q - z32) * s32) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    check_scales(name, w_np, scales.numpy())
    return QuantizedTensor(name, (R, K), scheme, codes.numpy(), scales.numpy(), zeros.numpy())


def stack_tensors(name: str, parts: list[QuantizedTensor]) -> QuantizedTensor:
    """One stacked [E, R, K] QuantizedTensor from per-expert [R, K] ones (the canonical expert layout)."""
    first = parts[0]
    return QuantizedTensor(
        name,
        (len(parts), *first.shape),
        first.scheme,
        np.stack([p.codes for p in parts]),
        np.stack([p.scales for p in parts]),
        np.stack([p.zeros for p in parts]),
    )
