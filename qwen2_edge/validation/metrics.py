"""Quality metrics between a reference and a candidate model, computed from logits.

All functions take logits as arrays [n_positions, vocab] (numpy or torch), computed on the same token ids,
and work in float64 so that tiny divergences (int8) are not lost to rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _log_softmax(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def kld_per_position(ref_logits, cand_logits) -> np.ndarray:
    """KL(p_ref || p_cand) at each position, in nats."""
    lp, lq = _log_softmax(ref_logits), _log_softmax(cand_logits)
    if lp.shape != lq.shape:
        raise ValueError(f"logit shapes differ: {lp.shape} vs {lq.shape}")
    return (np.exp(lp) * (lp - lq)).sum(axis=-1)


def mean_kld(ref_logits, cand_logits) -> float:
    """Mean KL divergence of the candidate's next-token distribution from the reference's (nats)."""
    return float(kld_per_position(ref_logits, cand_logits).mean())


def nll_per_position(logits, ids: Sequence[int]) -> np.ndarray:
    """Negative log-likelihood of ids[1:] under logits[:-1] (next-token prediction)."""
    lp = _log_softmax(logits)[:-1]
    target = np.asarray(ids)[1:]
    return -lp[np.arange(len(target)), target]


def perplexity(logits, ids: Sequence[int]) -> float:
    """exp(mean next-token NLL) of `ids` under `logits` (logits[i] predicts ids[i+1])."""
    return float(np.exp(nll_per_position(logits, ids).mean()))


def top1_agreement(ref_logits, cand_logits) -> float:
    """Fraction of positions where both models' most likely next token is the same."""
    a = np.asarray(ref_logits).argmax(axis=-1)
    b = np.asarray(cand_logits).argmax(axis=-1)
    return float((a == b).mean())
