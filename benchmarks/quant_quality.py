"""Quantization quality: our int4/int8 (GPTQ, and RTN for reference) vs llama.cpp's own Q4_0/Q8_0
quantizer on the same model, all run by the same runtime (llama.cpp) on the same held-out text.

    python -m benchmarks.quant_quality [--model builtin:teacher] [--tokens 4096] [--ctx 512] [--json]

Every variant is a GGUF file evaluated by llama-cpp-python with identical settings; the reference is our
f32 GGUF of the same checkpoint (so runtime differences cancel). Metrics per variant: mean KL divergence
of the next-token distribution to the reference, perplexity and its change, top-1 agreement, bits per
weight (tensor data / tensor elements of the f32 file; for a MoE hybrid those include the GGUF
exporter's exact rewrite of dense layers). llama.cpp's files are made by `llama_model_quantize` from our
f16 GGUF (llama.cpp's own tensor type choices apply, e.g. Q6_K for the output matrix).
Target: our Q4_0-compatible GPTQ mean KLD <= 0.5x llama.cpp Q4_0's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Variant:
    label: str
    quant: str  # our gguf quant type, or the llama.cpp ftype name for maker == "llama.cpp"
    maker: str  # "ours" | "llama.cpp" | "float"
    method: str = "rtn"
    policy: str = "default"
    options: dict = field(default_factory=dict)


# One row per file the benchmark builds and measures.
VARIANTS: tuple[Variant, ...] = (
    Variant("float f32 (reference)", "f32", "float"),
    Variant("ours int4 GPTQ (q4_0)", "q4_0", "ours", "gptq"),
    Variant("ours int4 RTN (q4_0)", "q4_0", "ours", "rtn"),
    # every matrix Q4_0, embeddings and lm_head too: fewer bits than llama.cpp's Q4_0 file (Q6_K output)
    Variant("ours int4 GPTQ all-q4_0", "q4_0", "ours", "gptq", policy="all"),
    Variant("llama.cpp Q4_0", "Q4_0", "llama.cpp"),
    Variant("ours int8 GPTQ (q8_0)", "q8_0", "ours", "gptq"),
    Variant("ours int8 RTN (q8_0)", "q8_0", "ours", "rtn"),
    Variant("llama.cpp Q8_0", "Q8_0", "llama.cpp"),
)


def build(
    v: Variant, model: str, work: Path, f16: Path, calib_tokens: int, threads: int | None
) -> tuple[Path, float]:
    """Write the variant's GGUF; returns (path, seconds)."""
    from qwen2_edge.exporters.api import export_model

    t0 = time.perf_counter()
    out = work / (v.label.split(" (")[0].replace(" ", "_").replace(".", "").replace("-", "_") + ".gguf")
    if v.maker == "llama.cpp":
        import llama_cpp

        from qwen2_edge.exporters.gguf import llama_quantize

        llama_quantize(f16, out, getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{v.quant}"), threads)
    else:
        kw = {"calib_tokens": calib_tokens} if v.method != "rtn" else {}
        export_model(
            model, "gguf", v.quant, out, method=v.method, policy=v.policy, threads=threads, force=True, **kw
        )
    return out, time.perf_counter() - t0


def tensor_bits(path: Path) -> int:
    """Bits of tensor data in a GGUF file (metadata and the tokenizer excluded)."""
    from gguf import GGUFReader

    return 8 * sum(int(t.n_bytes) for t in GGUFReader(str(path)).tensors)


def gguf_logits(path: Path, chunks: list[list[int]], threads: int | None) -> list[np.ndarray]:
    from qwen2_edge.runtimes.llamacpp import LlamaCppSession

    s = LlamaCppSession(path, threads=threads, n_ctx=max(len(c) for c in chunks), kv_cache="f32")
    out = []
    for c in chunks:
        s.reset()
        out.append(s.append(c))
    s.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="builtin:teacher")
    ap.add_argument("--tokens", type=int, default=4096, help="held-out tokens evaluated")
    ap.add_argument("--ctx", type=int, default=512, help="evaluation window (tokens per chunk)")
    ap.add_argument("--calib-tokens", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--work", default=None, help="folder for the GGUF files (default: a temp folder)")
    ap.add_argument("--only", default=None, help="comma-separated substrings of variant labels to run")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from qwen2_edge.data.corpus import heldout_text
    from qwen2_edge.exporters.api import export_model
    from qwen2_edge.model.checkpoint import open_checkpoint
    from qwen2_edge.model.tokenizer import TextTokenizer
    from qwen2_edge.validation.metrics import kld_per_position, nll_per_position, top1_agreement

    ckpt = open_checkpoint(args.model, need_tokenizer=True)
    ids = TextTokenizer(ckpt.path).encode(heldout_text())
    n = min(args.tokens, len(ids)) // args.ctx
    chunks = [ids[i * args.ctx : (i + 1) * args.ctx] for i in range(n)]
    variants = [
        v
        for v in VARIANTS
        if v.maker == "float" or not args.only or any(s in v.label for s in args.only.split(","))
    ]

    tmp = tempfile.TemporaryDirectory(prefix="quant-quality-")
    work = Path(args.work or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    f16 = work / "float_f16.gguf"
    export_model(args.model, "gguf", "f16", f16, force=True)
    rows, ref, n_weights = [], None, None
    for v in variants:
        path, secs = build(v, args.model, work, f16, args.calib_tokens, args.threads)
        logits = gguf_logits(path, chunks, args.threads)
        if ref is None:  # the f32 file: its tensor elements are the weights every variant stores
            ref, n_weights = logits, tensor_bits(path) / 32
        kld = np.concatenate([kld_per_position(r, c) for r, c in zip(ref, logits, strict=True)])
        nll = np.concatenate([nll_per_position(c, ids_) for c, ids_ in zip(logits, chunks, strict=True)])
        top1 = float(np.mean([top1_agreement(r, c) for r, c in zip(ref, logits, strict=True)]))
        rows.append({
            "variant": v.label, "method": v.method if v.maker == "ours" else v.maker,
            "bits_per_weight": tensor_bits(path) / n_weights, "mean_kld": float(kld.mean()),
            "kld_p99": float(np.quantile(kld, 0.99)), "ppl": float(np.exp(nll.mean())), "top1": top1,
            "build_s": secs,
        })  # fmt: skip
        print(f"  {v.label}: KLD {kld.mean():.3e} ({secs:.0f} s)", file=sys.stderr)
    base_ppl = rows[0]["ppl"]
    for r in rows:
        r["delta_ppl"] = r["ppl"] - base_ppl
    by = {r["variant"]: r for r in rows}
    ratios = {}
    for bits in ("4", "8"):
        ours = by.get(f"ours int{bits} GPTQ (q{bits}_0)")
        theirs = by.get(f"llama.cpp Q{bits}_0")
        if ours and theirs and theirs["mean_kld"] > 0:
            ratios[f"int{bits}_gptq_over_llamacpp_q{bits}_0"] = ours["mean_kld"] / theirs["mean_kld"]
    if args.json:
        print(json.dumps({"model": str(ckpt.path), "tokens": n * args.ctx, "ctx": args.ctx, "rows": rows,
                          "kld_ratios": ratios}, indent=2))  # fmt: skip
        return 0
    print(
        f"model {ckpt.path.name}, {n * args.ctx} held-out tokens in windows of {args.ctx}, runtime llama.cpp"
    )
    print(f"{'variant':<26} {'bpw':>6} {'mean KLD':>10} {'KLD p99':>10} {'ppl':>9} {'d-ppl':>8} {'top-1':>7}")
    for r in rows:
        print(
            f"{r['variant']:<26} {r['bits_per_weight']:>6.2f} {r['mean_kld']:>10.3e} {r['kld_p99']:>10.3e} "
            f"{r['ppl']:>9.3f} {r['delta_ppl']:>+8.3f} {r['top1']:>7.3f}"
        )
    for k, val in ratios.items():
        print(f"{k}: {val:.3f}" + (" (target <= 0.5)" if "int4" in k else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
