"""MoE expert load: how many tokens the reference's router sends to each expert of each MoE layer.

Qwen2-MoE's routed experts are chosen per token by top-k over the router's softmax; an imbalanced load
(some experts idle, some saturated) is the design's known weak spot and also what makes a quantized
expert that is rarely used hard to validate. Counts come from transformers' own router logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..model.spec import ModelSpec, MoEFFN


@dataclass
class ExpertLoad:
    layers: list[int]  # model layer index of each MoE layer, in order
    top_k: list[int]
    counts: np.ndarray  # [len(layers), max experts] tokens routed (top-k selections)
    tokens: int = 0

    @classmethod
    def for_spec(cls, spec: ModelSpec) -> ExpertLoad | None:
        moe = [(layer.index, layer.ffn) for layer in spec.layers if isinstance(layer.ffn, MoEFFN)]
        if not moe:
            return None
        n_exp = max(f.num_experts for _, f in moe)
        return cls([i for i, _ in moe], [f.top_k for _, f in moe], np.zeros((len(moe), n_exp), np.int64))

    def add(self, router_logits: list[np.ndarray]) -> None:
        """Count one forward pass: router logits [tokens, experts] per MoE layer, in layer order."""
        if len(router_logits) != len(self.layers):
            raise ValueError(f"{len(router_logits)} router outputs for {len(self.layers)} MoE layers")
        for row, (logits, k) in enumerate(zip(router_logits, self.top_k, strict=True)):
            # top-k of the logits == top-k of their softmax; argpartition is enough, order is irrelevant.
            chosen = np.argpartition(-np.asarray(logits), k - 1, axis=-1)[:, :k]
            self.counts[row] += np.bincount(chosen.ravel(), minlength=self.counts.shape[1])
        self.tokens += len(router_logits[0]) if router_logits else 0

    def fractions(self) -> np.ndarray:
        """Share of each layer's top-k selections that went to each expert (rows sum to 1)."""
        tot = self.counts.sum(axis=1, keepdims=True)
        return self.counts / np.maximum(tot, 1)

    def imbalance(self) -> list[float]:
        """Per layer: busiest expert's load / the uniform load (1.0 = perfectly balanced)."""
        f = self.fractions()
        return [float(row.max() * len(row)) for row in f]

    def to_json(self) -> dict:
        return {
            "layers": self.layers,
            "tokens": self.tokens,
            "counts": self.counts.tolist(),
            "imbalance": [round(x, 4) for x in self.imbalance()],
        }
