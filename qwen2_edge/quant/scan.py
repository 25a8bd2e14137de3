"""Sensitivity scan: quantize one tensor group at a time, measure end-to-end KL divergence to the float model.

The ranking says where precision matters (which groups a mixed-precision policy should keep at int8).
One float model is loaded; each group's weights are swapped for their dequantized values, evaluated on
held-out text, and restored.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..model.checkpoint import Checkpoint
from ..validation.metrics import mean_kld, perplexity, top1_agreement
from .apply import get_weight, restore, set_weight, snapshot
from .policy import BASE, FLOAT, QuantPolicy
from .scheme import QuantScheme
from .tensor import quantize_rtn

# (group, patterns): one row per group the scan measures. Patterns are fnmatch over canonical names.
SCAN_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("embeddings", ("model.embed_tokens.weight",)),
    ("lm_head", ("lm_head.weight",)),
    (
        "attention q/k/v",
        ("*.self_attn.q_proj.weight", "*.self_attn.k_proj.weight", "*.self_attn.v_proj.weight"),
    ),
    ("attention o", ("*.self_attn.o_proj.weight",)),
    ("dense FFN", ("*.mlp.gate_proj.weight", "*.mlp.up_proj.weight", "*.mlp.down_proj.weight")),
    ("shared experts", ("*.mlp.shared_expert.*",)),
    ("routed experts", ("*.mlp.experts.*",)),
    ("router + shared gate", ("*.mlp.gate.weight", "*.mlp.shared_expert_gate.weight")),
)


@dataclass
class ScanRow:
    group: str
    tensors: list[str]
    params: int
    kld: float
    top1: float
    ppl: float
    delta_ppl: float


def scan_groups(ckpt: Checkpoint, per_layer: bool = False) -> list[tuple[str, list[str]]]:
    """(group label, canonical tensor names) for the groups present in this model."""
    names = [n for n in ckpt.canonical_names() if len(_shape(ckpt, n)) >= 2]
    out = []
    for group, patterns in SCAN_GROUPS:
        members = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
        if not members:
            continue
        if per_layer and members[0].startswith("model.layers."):
            for i in sorted({int(n.split(".")[2]) for n in members}):
                out.append((f"{group} L{i}", [n for n in members if n.split(".")[2] == str(i)]))
        else:
            out.append((group, members))
    return out


def _shape(ckpt: Checkpoint, name: str) -> tuple[int, ...]:
    if name in ckpt.tensors:
        return ckpt.tensors[name].shape
    return tuple(ckpt.canonical(name).shape)


def eval_sequences(tokenizer, text: str | None, tokens: int, seq_len: int, source: str) -> torch.Tensor:
    """[n, seq_len] token ids of held-out text (default: the built-in corpus' held-out modules)."""
    if text is None:
        from ..data.corpus import heldout_text

        text = heldout_text()
    ids = tokenizer.encode(text)
    seq_len = min(seq_len, tokens)
    n = min(-(-tokens // seq_len), len(ids) // seq_len)
    if n == 0:
        raise UserError(f"evaluation text has {len(ids)} token(s); need at least {seq_len}", source)
    return torch.tensor(ids[: n * seq_len]).reshape(n, seq_len)


@torch.no_grad()
def model_logits(model, seqs: torch.Tensor) -> list[torch.Tensor]:
    return [model(input_ids=s[None], use_cache=False).logits[0].float() for s in seqs]


def compare(
    ref: list[torch.Tensor], cand: list[torch.Tensor], seqs: torch.Tensor
) -> tuple[float, float, float]:
    """(mean KLD, top-1 agreement, perplexity of the candidate) pooled over all sequences."""
    r, c = torch.cat(ref).numpy(), torch.cat(cand).numpy()
    ppl = float(
        np.exp(np.mean([np.log(perplexity(x.numpy(), s.tolist())) for x, s in zip(cand, seqs, strict=True)]))
    )
    return mean_kld(r, c), top1_agreement(r, c), ppl


def run_scan(
    ckpt: Checkpoint,
    scheme: QuantScheme,
    *,
    method: str = "rtn",
    text: str | None = None,
    text_source: str = "built-in held-out corpus",
    tokens: int = 2048,
    seq_len: int = 512,
    per_layer: bool = False,
    method_options: dict | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[ScanRow], float]:
    """Rows sorted by KLD (most sensitive first), and the float model's perplexity on the text."""
    from ..model.tokenizer import TextTokenizer
    from ..runtimes.reference import load_reference_model
    from .model import quantize_model

    seqs = eval_sequences(TextTokenizer(ckpt.path), text, tokens, seq_len, text_source)
    model = load_reference_model(ckpt)
    ref = model_logits(model, seqs)
    base_ppl = compare(ref, ref, seqs)[2]
    rows = []
    for group, members in scan_groups(ckpt, per_layer):
        if progress:
            progress(f"scanning {group} ({len(members)} tensors)")
        saved = snapshot(model, members)
        if method == "rtn":
            for n in members:
                set_weight(
                    model,
                    n,
                    torch.from_numpy(quantize_rtn(n, get_weight(model, n).numpy(), scheme).dequantize()),
                )
        else:
            pol = QuantPolicy(f"scan:{group}", tuple((n, BASE) for n in members) + (("*", FLOAT),))
            q = quantize_model(ckpt, scheme, pol, method=method, progress=False, **(method_options or {}))
            for n, t in q.tensors.items():
                set_weight(model, n, torch.from_numpy(t.dequantize()))
        kld, top1, ppl = compare(ref, model_logits(model, seqs), seqs)
        restore(model, saved)
        params = sum(int(np.prod(_shape(ckpt, n))) for n in members)
        rows.append(ScanRow(group, members, params, kld, top1, ppl, ppl - base_ppl))
    rows.sort(key=lambda r: r.kld, reverse=True)
    return rows, base_ppl


def rows_to_json(rows: list[ScanRow]) -> list[dict]:
    return [asdict(r) for r in rows]


def read_text_file(path: str | Path) -> str:
    p = Path(path)
    if not p.is_file():
        raise UserError("text file not found", p)
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError("not UTF-8 text", p) from None
