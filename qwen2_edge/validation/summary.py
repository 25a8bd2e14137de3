"""Aggregate statistics over scored tokens, with the standard errors llama.cpp's perplexity tool reports.

Conventions (llama.cpp `tools/perplexity`): the standard error of a mean is sqrt(var / (n - 1)); a
perplexity's error is ppl * stderr(mean NLL); Δppl's error accounts for the correlation between the two
runs' per-token NLLs (same text, nearly the same model), which makes it much smaller than either ppl's.
"""

from __future__ import annotations

import math

import numpy as np

from .token_stats import TokenStats


def mean_and_stderr(x: np.ndarray) -> tuple[float, float]:
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n == 0:
        return math.nan, math.nan
    mean = float(x.mean())
    if n == 1:
        return mean, math.nan
    return mean, math.sqrt(float(np.var(x)) / (n - 1))  # two-pass variance: exact zero for constants


def _exp(x: float) -> float:
    """exp that saturates to inf instead of raising (a broken artifact can have a mean NLL > 709)."""
    return math.exp(x) if x < 709.0 else math.inf


def perplexity(nll: np.ndarray) -> tuple[float, float]:
    """(exp(mean NLL), its standard error)."""
    m, e = mean_and_stderr(nll)
    ppl = _exp(m)
    return ppl, ppl * e


def delta_perplexity(nll: np.ndarray, nll_ref: np.ndarray) -> tuple[float, float]:
    """ppl(cand) - ppl(ref) and its standard error, with the covariance of the two runs."""
    ppl = _exp(float(np.mean(nll)))
    ppl_ref = _exp(float(np.mean(nll_ref)))
    # Error propagation of exp() (d ppl = ppl * d mean NLL) with the covariance of the two runs:
    # var(ppl) + var(ppl_ref) - 2 cov, computed as the variance of the per-token linearized difference
    # (algebraically llama.cpp's formula, but without its cancellation when the runs are identical).
    if not (math.isfinite(ppl) and math.isfinite(ppl_ref)):
        return ppl - ppl_ref, math.nan
    d = ppl * np.asarray(nll, np.float64) - ppl_ref * np.asarray(nll_ref, np.float64)
    _, err = mean_and_stderr(d)
    return ppl - ppl_ref, err


def summarize(s: TokenStats) -> dict[str, float]:
    """Every per-artifact number of the check report (JSON-ready floats; NaN when undefined)."""
    # A broken artifact can give perplexities near the float range; inf/NaN then propagate to the
    # gates (which fail on them) instead of warnings.
    with np.errstate(over="ignore", invalid="ignore"):
        return _summarize(s)


def _summarize(s: TokenStats) -> dict[str, float]:
    ppl, ppl_err = perplexity(s.nll)
    ppl_ref, _ = perplexity(s.nll_ref)
    dppl, dppl_err = delta_perplexity(s.nll, s.nll_ref)
    kld, kld_err = mean_and_stderr(s.kld)
    top1, top1_err = mean_and_stderr(s.top1.astype(np.float64))
    dp_mean, dp_err = mean_and_stderr(s.dp)
    finite = bool(np.isfinite(s.kld).all() and np.isfinite(s.nll).all())

    def pct(x: np.ndarray, q: float) -> float:
        return float(np.percentile(x, q)) if len(x) else math.nan

    return {
        "tokens": len(s),
        "ppl": ppl,
        "ppl_err": ppl_err,
        "delta_ppl": dppl,
        "delta_ppl_err": dppl_err,
        "delta_ppl_rel": dppl / ppl_ref if ppl_ref else math.nan,
        "kld_mean": kld,
        "kld_err": kld_err,
        "kld_median": pct(s.kld, 50),
        "kld_p99": pct(s.kld, 99),
        "kld_p999": pct(s.kld, 99.9),
        "kld_max": float(s.kld.max()) if len(s) else math.nan,
        "top1_agreement": top1,
        "top1_err": top1_err,
        "rms_dp": float(np.sqrt(np.mean(s.dp**2))) if len(s) else math.nan,
        "mean_dp": dp_mean,
        "mean_dp_err": dp_err,
        "max_dlogit": float(s.max_dlogit.max()) if len(s) else math.nan,
        "finite": finite,
    }
