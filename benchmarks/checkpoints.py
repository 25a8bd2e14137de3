"""Benchmark checkpoints with real model shapes and random weights, generated locally (no downloads).

    python -m benchmarks.checkpoints OUT_DIR [qwen2-0.5b|moe|window]

- qwen2-0.5b: the exact Qwen2-0.5B shape (vocab 151,936, hidden 896, intermediate 4,864, 24 layers,
  14 heads, 2 KV heads, tied embeddings), bf16 like the released model.
- moe: a Qwen2-MoE hybrid at hidden 896: 16 experts top-4 + shared expert, layer 0 dense, sliding
  window 512 on the even layers below 6 (Qwen2-MoE's max_window_layers rule).
- window: a Qwen2 whose every layer slides (hidden 512, 4 layers, 8 heads, 8 KV heads, window 128, the
  fixtures' small vocabulary): decode cost there is attention and KV cache, so it shows whether a
  windowed layer costs its window (`benchmarks/window_cost.py`).
The tokenizer is the fixtures' small byte-level BPE; the extra embedding rows are padding, as in Qwen2.
"""

from __future__ import annotations

import sys
from pathlib import Path

from qwen2_edge.testing.fixtures import FixtureSpec, make_checkpoint

# Qwen2-0.5B's dimensions, shared by both benchmark checkpoints.
_QWEN2_05B = dict(hidden=896, heads=14, kv_heads=2, intermediate=4864, tie=True, vocab_rows=151936, std=0.02)
_LONG_ROPE = {"max_position_embeddings": 32768, "rope_theta": 1000000.0}

BENCH_SPECS: dict[str, FixtureSpec] = {
    "qwen2-0.5b": FixtureSpec(layers=24, config=dict(_LONG_ROPE), **_QWEN2_05B),
    "moe": FixtureSpec(
        architecture="Qwen2MoeForCausalLM",
        layers=12,
        config={
            "num_experts": 16,
            "num_experts_per_tok": 4,
            "moe_intermediate_size": 512,
            "shared_expert_intermediate_size": 2048,
            "mlp_only_layers": [0],
            "norm_topk_prob": False,
            "use_sliding_window": True,
            "sliding_window": 512,
            "max_window_layers": 6,
            **_LONG_ROPE,
        },
        **_QWEN2_05B,
    ),
    # max_window_layers 0: every layer slides (Qwen2 rule: layer i slides when i >= max_window_layers).
    "window": FixtureSpec(
        hidden=512,
        layers=4,
        heads=8,
        kv_heads=8,
        intermediate=1536,
        std=0.02,
        config={"use_sliding_window": True, "sliding_window": 128, "max_window_layers": 0, **_LONG_ROPE},
    ),
}


def bench_checkpoint(kind: str, folder: str | Path) -> Path:
    """Make (once) and return the benchmark checkpoint `kind` in `folder`."""
    folder = Path(folder)
    if (folder / "config.json").is_file():
        return folder
    return make_checkpoint(BENCH_SPECS[kind], folder, dtype="bfloat16")


if __name__ == "__main__":
    out = Path(sys.argv[1])
    kinds = sys.argv[2:] or list(BENCH_SPECS)
    for k in kinds:
        print(bench_checkpoint(k, out / k))
