"""Block quantizers and GPTQ on single matrices: round trips, edge blocks, padding, bad values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from qwen2_edge.errors import UserError
from qwen2_edge.quant import QuantScheme, quantize_rtn
from qwen2_edge.quant.methods.gptq import block_params, gptq_quantize

SCHEMES = [QuantScheme(4), QuantScheme(8), QuantScheme(4, symmetric=False), QuantScheme(8, symmetric=False)]
SCHEMES_ALL_BLOCKS = [
    QuantScheme(b, bs, sym) for b in (4, 8) for bs in (32, 64, 128) for sym in (True, False)
]


def _max_error_bound(q) -> np.ndarray:
    """Per-element bound on |dequant - w|: half a step for symmetric int8; one step for symmetric int4
    (levels -8..7 around the block's max: the opposite extreme may clip) and for asymmetric blocks
    (integer zero point: the grid is shifted by up to half a step); plus float16 scale rounding slack."""
    s = np.abs(q.scales.astype(np.float32))
    step = 0.5 * s if (q.scheme.symmetric and q.scheme.bits == 8) else s
    per_col = np.repeat(step * (1 + 2**-9), q.scheme.block_size, axis=-1)[..., : q.k]
    return per_col + 1e-12


matrices = st.tuples(st.integers(1, 4), st.integers(1, 150)).flatmap(
    lambda shape: arrays(
        np.float32,
        shape,
        # zeros, or magnitudes whose block scales are normal float16 numbers (below ~6e-5 float16 scales,
        # in GGUF and MatMulNBits alike, are subnormal and lose relative precision)
        elements=st.one_of(
            st.just(0.0), st.floats(0.015625, 1e3, width=32), st.floats(-1e3, -0.015625, width=32)
        ),
    )
)


@settings(max_examples=50, deadline=None)
@given(w=matrices, scheme=st.sampled_from(SCHEMES_ALL_BLOCKS))
def test_rtn_round_trip_property(w, scheme):
    q = quantize_rtn("w", w, scheme)
    b = scheme.block_size
    assert q.codes.shape == (w.shape[0], -(-w.shape[1] // b) * b)
    assert q.codes.max() <= scheme.levels - 1
    if scheme.symmetric:
        assert (q.zeros == scheme.mid).all()
    deq = q.dequantize()
    assert deq.shape == w.shape
    assert np.all(np.abs(deq - w) <= _max_error_bound(q) + 1e-6 * np.abs(w))
    # Re-quantizing the dequantized values gives them back: the codes are a fixed point (what a second
    # tool re-deriving Q4_0 blocks from these floats would get).
    if scheme.symmetric and scheme.bits == 4:
        np.testing.assert_array_equal(quantize_rtn("w", deq, scheme).dequantize(), deq)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_all_zero_block_is_exact(scheme):
    w = np.zeros((3, 64), np.float32)
    w[:, 32:] = np.linspace(-1, 1, 32)  # second block non-zero: zero blocks next to real ones
    for q in (quantize_rtn("w", w, scheme), gptq_quantize("w", w, torch.eye(64), scheme)):
        assert (q.scales[:, 0] == 0).all()
        assert (q.codes[:, :32] == q.zeros[:, :1]).all()
        np.testing.assert_array_equal(q.dequantize()[:, :32], 0.0)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("value", [0.37, -5.0, 0.01])
def test_constant_block_reproduced(scheme, value):
    w = np.full((2, 32), value, np.float32)
    deq = quantize_rtn("w", w, scheme).dequantize()
    # float16 scale; asymmetric blocks' 7-bit scale is rounded up: relative error below 2**-6
    np.testing.assert_allclose(deq, w, rtol=2**-6)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_huge_outlier_stays_in_its_block(scheme):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 96)).astype(np.float32)
    w[1, 40] = 3e4
    q = quantize_rtn("w", w, scheme)
    deq = q.dequantize()
    assert np.isfinite(deq).all()
    assert abs(deq[1, 40] - 3e4) <= 3e4 * 2**-6  # the outlier itself survives (float16 / 7-bit scale)
    other = np.ones_like(w, bool)
    other[1, 32:64] = False  # only the outlier's own block loses resolution
    ref = quantize_rtn("w", np.where(other, w, 0), scheme).dequantize()
    np.testing.assert_array_equal(deq[other], ref[other])


def test_weight_too_large_for_float16_scales_is_a_clear_error():
    w = np.ones((2, 32), np.float32)
    w[0, 3] = 1e6  # scale 1e6 / 8 > float16 max
    with pytest.raises(UserError, match="'big'.*too large for float16"):
        quantize_rtn("big", w, QuantScheme(4))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_is_one_line_error_naming_the_tensor(bad):
    w = np.ones((2, 64), np.float32)
    w[1, 7] = bad
    for fn in (
        lambda: quantize_rtn("model.layers.3.mlp.up_proj.weight", w, QuantScheme(4)),
        lambda: gptq_quantize("model.layers.3.mlp.up_proj.weight", w, torch.eye(64), QuantScheme(4)),
    ):
        with pytest.raises(UserError) as e:
            fn()
        msg = str(e.value)
        assert "model.layers.3.mlp.up_proj.weight" in msg and "NaN/Inf" in msg and "\n" not in msg


@pytest.mark.parametrize("scheme", SCHEMES_ALL_BLOCKS)
def test_k_not_multiple_of_block_is_zero_padded(scheme):
    rng = np.random.default_rng(1)
    k = scheme.block_size + 9
    w = rng.standard_normal((5, k)).astype(np.float32)
    padded = np.concatenate([w, np.zeros((5, scheme.block_size - 9), np.float32)], axis=1)
    for quant in (
        lambda x: quantize_rtn("w", x, scheme),
        lambda x: gptq_quantize("w", x, torch.eye(x.shape[1]), scheme, clip_grid=(1.0,)),
    ):
        q, qp = quant(w), quant(padded)
        assert q.shape == (5, k) and q.padded and q.codes.shape == (5, 2 * scheme.block_size)
        np.testing.assert_array_equal(q.codes, qp.codes)
        np.testing.assert_array_equal(q.scales, qp.scales)
        assert (q.codes[:, k:] == q.zeros[:, -1:]).all()  # padding decodes to exactly 0
        np.testing.assert_array_equal(q.dequantize(), qp.dequantize()[:, :k])


@pytest.mark.parametrize("scheme", SCHEMES_ALL_BLOCKS)
def test_gptq_with_identity_hessian_is_rtn(scheme):
    """No input correlation -> nothing to compensate: GPTQ (without clip search) must equal RTN bit for bit."""
    w = np.random.default_rng(2).standard_normal((16, 200)).astype(np.float32)
    g = gptq_quantize("w", w, torch.eye(200), scheme, clip_grid=(1.0,))
    r = quantize_rtn("w", w, scheme)
    for a in ("codes", "scales", "zeros"):
        np.testing.assert_array_equal(getattr(g, a), getattr(r, a))


@pytest.mark.parametrize(
    "scheme", [QuantScheme(4), QuantScheme(4, 128), QuantScheme(4, symmetric=False), QuantScheme(8)]
)
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_lowers_output_error(scheme, act_order):
    """||X (W_q - W)^T|| on the calibration inputs: GPTQ below RTN by a clear margin."""
    rng = np.random.default_rng(3)
    K = 192
    X = rng.standard_normal((1024, K)).astype(np.float32) @ rng.standard_normal((K, K)).astype(np.float32)
    w = rng.standard_normal((32, K)).astype(np.float32)
    H = torch.from_numpy(X.T @ X)

    def err(q):
        return np.linalg.norm(X @ (q.dequantize() - w).T)

    g = gptq_quantize("w", w, H, scheme, act_order=act_order)
    assert err(g) < 0.85 * err(quantize_rtn("w", w, scheme))


@settings(max_examples=30, deadline=None)
@given(
    w=st.lists(st.floats(-10, 10, allow_nan=False, width=32), min_size=64, max_size=64),
    scheme=st.sampled_from(SCHEMES),
)
def test_clip_search_never_worse_than_round_to_nearest(w, scheme):
    """The scale search includes the round-to-nearest parameters, so its weighted error is never larger."""
    blk = torch.tensor(w, dtype=torch.float32).reshape(2, 32)
    cw = torch.linspace(0.5, 2.0, 32)

    def err(s, z):
        s32, zf = s.float()[:, None], z.float()[:, None]
        inv = torch.where(s32 == 0, 0.0, 1.0 / torch.where(s32 == 0, 1.0, s32))
        q = torch.clamp(torch.round(blk * inv) + zf, 0, scheme.levels - 1)
        return (((q - zf) * s32 - blk) ** 2 * cw).sum(1)

    e_rtn = err(*block_params(blk, scheme, cw, (1.0,)))
    e_clip = err(*block_params(blk, scheme, cw, tuple(1 - 0.05 * i for i in range(8))))
    assert (e_clip <= e_rtn * (1 + 1e-6) + 1e-12).all()
