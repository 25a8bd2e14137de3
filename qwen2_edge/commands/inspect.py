"""qwen2-edge inspect MODEL_DIR: layers, attention/FFN kinds, parameters, size estimates."""

from __future__ import annotations

import argparse
import json
from typing import Any

HELP = "show a checkpoint's architecture, parameter counts and size estimates"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="checkpoint directory, builtin:teacher or hub id org/name[@revision]")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def inspect_model(path: str) -> dict[str, Any]:
    """Everything `inspect` reports, as plain data."""
    from ..model import MoEFFN, open_checkpoint
    from ..model.params import SIZE_ESTIMATES, count_params
    from ..model.tokenizer import TextTokenizer

    ckpt = open_checkpoint(path)
    spec = ckpt.spec
    counts = count_params(spec)
    tok_size = TextTokenizer(ckpt.path).vocab_size if ckpt.tokenizer_file.is_file() else None
    layers = []
    for layer in spec.layers:
        f = layer.ffn
        ffn: dict[str, Any] = {"kind": f.kind}
        if isinstance(f, MoEFFN):
            ffn.update(
                experts=f.num_experts,
                top_k=f.top_k,
                norm_topk_prob=f.norm_topk_prob,
                expert_intermediate=f.expert_intermediate,
                shared_intermediate=f.shared_intermediate,
                shared_gate="sigmoid",
            )
        else:
            ffn["intermediate"] = f.intermediate
        layers.append(
            {
                "index": layer.index,
                "attention": layer.attention.kind,
                "window": layer.attention.window,
                "ffn": ffn,
            }
        )
    return {
        "path": str(ckpt.path),
        "architecture": spec.architecture,
        "family": spec.family,
        "hidden_size": spec.hidden_size,
        "num_layers": spec.num_layers,
        "num_heads": spec.num_heads,
        "num_kv_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "rope_theta": spec.rope_theta,
        "rope_scaling": spec.rope_scaling,
        "rms_norm_eps": spec.rms_norm_eps,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "vocab_rows": spec.vocab_size,
        "tokenizer_size": tok_size,
        "params_total": counts.total,
        "params_active": counts.active,
        "params_embedding": counts.embedding,
        "experts": sorted({x["ffn"]["experts"] for x in layers if x["ffn"]["kind"] == "moe"}),
        "sliding_window": spec.max_window,
        "checkpoint_bytes": ckpt.file_size(),
        "estimated_bytes": {k: counts.file_bytes(k) for k in SIZE_ESTIMATES},
        "layers": layers,
    }


def _fmt_n(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def run(args: argparse.Namespace) -> int:
    info = inspect_model(args.model)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['path']}: {info['architecture']} ({info['family']})")
    print(
        f"  hidden {info['hidden_size']}, {info['num_layers']} layers, {info['num_heads']} heads / "
        f"{info['num_kv_heads']} KV heads, head_dim {info['head_dim']}, rope theta {info['rope_theta']:g}"
        + (f" scaling {info['rope_scaling']}" if info["rope_scaling"] else "")
        + f", rms eps {info['rms_norm_eps']:g}"
    )
    tok = info["tokenizer_size"]
    print(
        f"  vocabulary: {info['vocab_rows']} embedding rows, tokenizer {tok if tok is not None else '?'} tokens"
        + (f" ({info['vocab_rows'] - tok} padding rows)" if tok and info["vocab_rows"] > tok else "")
        + f"; embeddings {'tied' if info['tie_word_embeddings'] else 'untied'}"
    )
    print(
        f"  parameters: {_fmt_n(info['params_total'])} total, {_fmt_n(info['params_active'])} active per token"
        f" (embedding {_fmt_n(info['params_embedding'])})"
    )
    est = info["estimated_bytes"]
    print(
        "  estimated file size: "
        + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in est.items())
        + f" (checkpoint on disk {info['checkpoint_bytes'] / 2**20:.1f} MiB)"
    )
    print(f"  {'layer':>5}  {'attention':<14} ffn")
    for x in info["layers"]:
        attn = "full" if x["window"] is None else f"sliding w={x['window']}"
        f = x["ffn"]
        if f["kind"] == "moe":
            ffn = (
                f"MoE {f['experts']} experts top-{f['top_k']} (I={f['expert_intermediate']}"
                f"{', normalized' if f['norm_topk_prob'] else ''}) + shared expert I={f['shared_intermediate']} (sigmoid gate)"
            )
        else:
            ffn = f"dense SwiGLU I={f['intermediate']}"
        print(f"  {x['index']:>5}  {attn:<14} {ffn}")
    return 0
