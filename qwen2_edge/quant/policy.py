"""Which tensors are quantized, and how: ordered name-pattern rules, first match wins.

Named policies are rows of POLICIES; users override per pattern (`--override 'PATTERN=int8'`).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from .scheme import QuantScheme

FLOAT = "float"  # keep the tensor in float (f32 / f16 as the format stores floats)
BASE = "base"  # use the scheme the user asked for (--quant)


@dataclass(frozen=True)
class QuantPolicy:
    name: str
    rules: tuple[tuple[str, str], ...]  # (fnmatch pattern, FLOAT | BASE | "int8" | "int4" ...)
    description: str = ""
    overrides: tuple[tuple[str, str], ...] = field(default=())

    def with_overrides(self, overrides: list[tuple[str, str]]) -> QuantPolicy:
        return QuantPolicy(self.name, self.rules, self.description, tuple(overrides) + self.overrides)

    def decide(self, name: str, ndim: int) -> str:
        """FLOAT, BASE, or an explicit scheme string for tensor `name`."""
        if ndim < 2:
            return FLOAT  # norms and biases are never quantized
        for pattern, action in (*self.overrides, *self.rules):
            if fnmatch.fnmatchcase(name, pattern):
                return action
        return BASE

    def scheme_for(self, name: str, ndim: int, base: QuantScheme) -> QuantScheme | None:
        from .scheme import parse_scheme

        action = self.decide(name, ndim)
        if action == FLOAT:
            return None
        if action == BASE:
            return base
        return parse_scheme(action, base.block_size, base.symmetric)


_ROUTING = (("*.mlp.gate.weight", FLOAT), ("*.mlp.shared_expert_gate.weight", FLOAT))

POLICIES: dict[str, QuantPolicy] = {
    p.name: p
    for p in (
        QuantPolicy(
            "default",
            (*_ROUTING, ("model.embed_tokens.weight", "int8"), ("lm_head.weight", "int8")),
            "router and shared-expert gate float; embeddings and lm_head int8; every other matrix at --quant",
        ),
        QuantPolicy("all", _ROUTING, "every matrix at --quant (router and shared-expert gate float)"),
        QuantPolicy(
            "attn-int8",
            (
                *_ROUTING,
                ("model.embed_tokens.weight", "int8"),
                ("lm_head.weight", "int8"),
                ("*.self_attn.*", "int8"),
            ),
            "like default, attention projections int8 too; FFN and experts at --quant",
        ),
    )
}
