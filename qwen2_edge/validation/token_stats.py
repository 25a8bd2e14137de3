"""Per-token comparison of a candidate's logits with the reference's: the raw material of every statistic.

Pure functions over numpy arrays. Probabilities are computed in float64 so that an exact float32 artifact
shows KL divergences at the 1e-9 level instead of rounding noise of the comparison itself.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

# Rows per block when turning [tokens, vocab] logits into float64 probabilities: bounds the temporary
# memory (a 151,936-row vocabulary at 128 rows is ~150 MiB per float64 array).
_BLOCK_ROWS = 128


@dataclass
class TokenStats:
    """One value per scored position (all arrays have the same length)."""

    nll_ref: np.ndarray  # -log p_ref(next token of the text)
    nll: np.ndarray  # -log p_cand(next token of the text)
    kld: np.ndarray  # KL(p_ref || p_cand), nats
    top1: np.ndarray  # bool: argmax equal
    dp: np.ndarray  # p_cand(ref top token) - p_ref(ref top token)
    max_dlogit: np.ndarray  # max over the vocabulary of |logit_cand - logit_ref|

    def __len__(self) -> int:
        return len(self.kld)

    @classmethod
    def concat(cls, parts: list[TokenStats]) -> TokenStats:
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)})

    def select(self, index) -> TokenStats:
        return TokenStats(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def log_softmax64(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def compare_logits(ref: np.ndarray, cand: np.ndarray, targets: np.ndarray) -> TokenStats:
    """Statistics for positions whose next token is `targets` (ref, cand: [n, V] logits; targets: [n]).

    When the two runtimes return different vocabulary widths (embedding padding rows kept by one and
    dropped by the other) both are compared over the common leading rows, renormalized there.
    """
    n = len(targets)
    if ref.shape[0] != n or cand.shape[0] != n:
        raise ValueError(f"logits rows {ref.shape[0]}/{cand.shape[0]} != targets {n}")
    v = min(ref.shape[1], cand.shape[1])
    targets = np.asarray(targets, dtype=np.int64)
    out = {k: np.empty(n) for k in ("nll_ref", "nll", "kld", "dp", "max_dlogit")}
    top1 = np.empty(n, dtype=bool)
    for a in range(0, n, _BLOCK_ROWS):
        b = min(n, a + _BLOCK_ROWS)
        r = np.asarray(ref[a:b, :v], dtype=np.float64)
        c = np.asarray(cand[a:b, :v], dtype=np.float64)
        lr, lc = log_softmax64(r), log_softmax64(c)
        pr = np.exp(lr)
        rows = np.arange(b - a)
        t = targets[a:b]
        out["nll_ref"][a:b] = -lr[rows, t]
        out["nll"][a:b] = -lc[rows, t]
        # KL(P||Q) = sum P (log P - log Q); clipped at 0 against float64 rounding for identical inputs.
        out["kld"][a:b] = np.maximum((pr * (lr - lc)).sum(axis=-1), 0.0)
        top_r = r.argmax(axis=-1)
        top1[a:b] = top_r == c.argmax(axis=-1)
        out["dp"][a:b] = np.exp(lc[rows, top_r]) - pr[rows, top_r]
        out["max_dlogit"][a:b] = np.abs(c - r).max(axis=-1)
    return TokenStats(top1=top1, **out)
