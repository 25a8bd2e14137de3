"""Training losses: next-token cross-entropy, temperature-scaled KL to a teacher, router load balance."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def next_token_ce(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting ids[:, t+1] from logits[:, t]."""
    V = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, V).float(), ids[:, 1:].reshape(-1))


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """tau^2 * KL(p_T/tau || p_S/tau), mean over positions (the positions CE is taken on).

    The tau^2 factor keeps the gradient scale of the soft term independent of the temperature
    (Hinton et al.), so alpha means the same thing at any tau.
    """
    V = student_logits.shape[-1]
    s = F.log_softmax(student_logits[:, :-1].reshape(-1, V).float() / tau, dim=-1)
    t = F.log_softmax(teacher_logits[:, :-1].reshape(-1, V).float() / tau, dim=-1)
    return (tau * tau) * F.kl_div(s, t, log_target=True, reduction="batchmean")


def expert_load(router_logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Share of routed token slots each expert receives: [E], sums to 1."""
    E = router_logits.shape[-1]
    chosen = router_logits.topk(top_k, dim=-1).indices.reshape(-1)
    return torch.bincount(chosen, minlength=E).float() / chosen.numel()


def load_balancing_loss(router_logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Switch-Transformer auxiliary loss for one MoE layer: E * sum_e f_e * P_e.

    f_e (the share of top-k slots routed to expert e) is not differentiable; P_e (the mean router
    probability of e) carries the gradient. It equals 1 at perfect balance and grows with imbalance
    (transformers' `load_balancing_loss_func` computes the same quantity, concatenated over layers).
    """
    E = router_logits.shape[-1]
    probs = F.softmax(router_logits.float(), dim=-1)
    f = expert_load(router_logits.detach(), top_k)
    return E * (f * probs.mean(0)).sum()


def coefficient_of_variation(load: torch.Tensor) -> float:
    """Imbalance of a per-expert load vector: std / mean (0 = perfectly balanced)."""
    return float(load.std(unbiased=False) / load.mean())
