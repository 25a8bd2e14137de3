"""The architecture's claim at a realistic size (issue #13, deliverable 5): a MoE-hybrid windowed model with
the active parameters of Qwen2-0.5B against Qwen2-0.5B itself, on a device: decode tok/s, ms/token, peak RSS
and KV bytes at 512 / 4096 / 16384 tokens of context, int4 ONNX (onnxruntime) and Q4_0 GGUF (llama.cpp),
each runtime at its default KV cache (onnxruntime f32, llama.cpp f16). Random weights: speed and memory
only (quality at equal active parameters is benchmarks/student_tradeoff.py's job).

    python -m benchmarks.architecture_claim [--out bench-out/architecture] [--contexts 512,4096,16384]
        [--shapes dense,dense_windowed,moe_windowed] [--threads 2] [--keep]

Shapes (all: Qwen2-0.5B's hidden 896, 24 layers, 14 heads / 2 KV heads, tied 151,936-row vocabulary, 32k
RoPE positions, bf16 checkpoints made locally):
- dense: Qwen2-0.5B (intermediate 4864, full attention everywhere).
- dense_windowed: the same with a 512-token window on 3 of every 4 layers (layers 3, 7, ... keep full
  attention): what the windows alone buy.
- moe_windowed: Qwen2-MoE hybrid with the same active FFN width per token: layer 0 dense (4864), the other
  23 layers a 2432-wide shared expert plus 8 experts of 608, top-4 (2432 + 4 x 608 = 4864), normalized top-k,
  shared-expert gates zero (exact in GGUF's step35 encoding as well), the same window pattern.
Checkpoints (1-2 GB each) are written under OUT/ckpt and deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from benchmarks.checkpoints import _LONG_ROPE, _QWEN2_05B  # noqa: PLC2701 - the shared 0.5B dimensions
from qwen2_edge.testing.fixtures import FixtureSpec, make_checkpoint

REPO = Path(__file__).resolve().parents[1]
WINDOW = 512
LAYERS = 24
LAYER_TYPES = ["full_attention" if i % 4 == 3 else "sliding_attention" for i in range(LAYERS)]
_WINDOWED = {"use_sliding_window": True, "sliding_window": WINDOW, "layer_types": LAYER_TYPES}

SHAPES: dict[str, FixtureSpec] = {
    "dense": FixtureSpec(layers=LAYERS, config=dict(_LONG_ROPE), **_QWEN2_05B),
    "dense_windowed": FixtureSpec(layers=LAYERS, config={**_LONG_ROPE, **_WINDOWED}, **_QWEN2_05B),
    "moe_windowed": FixtureSpec(
        architecture="Qwen2MoeForCausalLM",
        layers=LAYERS,
        config={
            **_LONG_ROPE,
            **_WINDOWED,
            "num_experts": 8,
            "num_experts_per_tok": 4,
            "moe_intermediate_size": 608,
            "shared_expert_intermediate_size": 2432,
            "mlp_only_layers": [0],
            "norm_topk_prob": True,
        },
        **_QWEN2_05B,
    ),
}


def zero_shared_expert_gates(folder: Path) -> None:
    """A constant shared-expert gate (sigmoid(0) = 1/2), as `--shared-gate constant` students have: the
    hybrid is then exact in GGUF (step35) too. Rewrites the safetensors files in place."""
    import torch
    from safetensors.torch import load_file, save_file

    for f in sorted(folder.glob("*.safetensors")):
        tensors = load_file(str(f))
        gates = [k for k in tensors if k.endswith("shared_expert_gate.weight")]
        if gates:
            for k in gates:
                tensors[k] = torch.zeros_like(tensors[k])
            save_file(tensors, str(f), metadata={"format": "pt"})


def make_artifacts(name: str, out: Path, log) -> list[Path]:
    from qwen2_edge.exporters.api import export_model

    ckpt = out / "ckpt" / name
    if not (ckpt / "config.json").is_file():
        log(f"{name}: making the checkpoint")
        make_checkpoint(SHAPES[name], ckpt, dtype="bfloat16")
        zero_shared_expert_gates(ckpt)
    arts = [out / f"{name}-int4", out / f"{name}-q4_0.gguf"]
    for (fmt, quant), path in zip((("onnx", "int4"), ("gguf", "q4_0")), arts, strict=True):
        if not path.exists():
            log(f"{name}: export {fmt} {quant}")
            r = export_model(ckpt, fmt=fmt, quant=quant, out=path)
            log(f"  {r.bytes / 1e6:.1f} MB in {r.seconds:.1f} s")
    return arts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "bench-out" / "architecture"))
    ap.add_argument("--contexts", default="512,4096,16384")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints (1-2 GB each)")
    a = ap.parse_args(argv)

    from qwen2_edge.bench.measure import BenchOptions
    from qwen2_edge.bench.report import format_table, results_json
    from qwen2_edge.bench.run import bench_artifacts
    from qwen2_edge.model.params import count_params
    from qwen2_edge.model.spec import read_spec

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    shapes = a.shapes.split(",")
    paths, labels, params = [], [], {}
    for name in shapes:
        onnx, gguf = make_artifacts(name, out, log)
        c = count_params(read_spec(out / "ckpt" / name))
        params[name] = {"total": c.total, "active": c.active}
        paths += [onnx, gguf]
        labels += [f"{name} onnx int4", f"{name} gguf q4_0"]
    contexts = tuple(int(x) for x in a.contexts.split(","))
    opts = BenchOptions(threads=a.threads, repeat=a.repeat, contexts=contexts, window_sweep=False)
    log(f"bench {len(paths)} artifacts at contexts {list(contexts)} (load average {os.getloadavg()[0]:.2f})")
    results = bench_artifacts(paths, opts, labels=labels, progress=log)
    print(format_table(results))
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "load_start": os.getloadavg()[0], "params": params,
            "options": opts.to_json()}  # fmt: skip
    (out / "results.json").write_text(json.dumps(results_json(results, None, meta), indent=1) + "\n")
    (out / "results.md").write_text(markdown(results, params, contexts, meta))
    print((out / "results.md").read_text())
    if not a.keep:
        shutil.rmtree(out / "ckpt", ignore_errors=True)
    return 0


def markdown(results, params: dict, contexts: tuple[int, ...], meta: dict) -> str:
    cs = " / ".join(str(c) for c in contexts)
    lines = [
        f"Measured {meta['date']} (load average at start {meta['load_start']:.2f}); "
        f"{meta['options']['threads']} threads; median of {meta['options']['repeat']} rounds of "
        f"{meta['options']['context_gen_tokens']} decoded tokens after each context.",
        "",
        f"| artifact | params total / active | file MB | decode tok/s @ {cs} | peak RSS MB @ {cs} | KV MiB @ {cs} |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        shape = r.label.split(" ")[0]
        p = params.get(shape, {})
        by = {c.context: c for c in r.contexts}
        lines.append(
            f"| {r.label} ({r.contexts[0].kv_cache if r.contexts else '?'} KV) | "
            f"{p.get('total', 0) / 1e6:.0f}M / {p.get('active', 0) / 1e6:.0f}M | {r.file_mb * 2**20 / 1e6:.0f} | "
            + " / ".join(f"{by[c].decode_tok_s:.1f}" if c in by else "-" for c in contexts) + " | "
            + " / ".join(f"{by[c].peak_rss_mb:.0f}" if c in by else "-" for c in contexts) + " | "
            + " / ".join(f"{by[c].kv_bytes / 2**20:.1f}" if c in by else "-" for c in contexts) + " |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
