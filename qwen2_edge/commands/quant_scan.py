"""qwen2-edge quant-scan MODEL: which tensor groups are most sensitive to quantization."""

from __future__ import annotations

import argparse
import json
import sys

HELP = "rank tensor groups by end-to-end KL divergence when quantized alone (sensitivity scan)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="checkpoint directory, builtin:teacher or hub id org/name[@revision]")
    p.add_argument("--quant", default="int4", help="scheme applied to each group: int4, int4_asym, int8")
    p.add_argument("--block-size", type=int, default=32, help="block size (32, 64, 128)")
    p.add_argument(
        "--method", default="rtn", help="quantization method (rtn is fast; gptq calibrates per group)"
    )
    p.add_argument(
        "--text", default=None, metavar="FILE", help="held-out text (default: built-in held-out corpus)"
    )
    p.add_argument("--tokens", type=int, default=2048, help="held-out tokens to evaluate")
    p.add_argument("--seq-len", type=int, default=512, help="evaluation sequence length")
    p.add_argument("--per-layer", action="store_true", help="one row per group and layer")
    p.add_argument("--calib", action="append", default=[], metavar="FILE", help="calibration text for gptq")
    p.add_argument("--calib-tokens", type=int, default=8192, help="calibration tokens for gptq")
    p.add_argument("--json", action="store_true", help="print the ranking as JSON")


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..model.checkpoint import open_checkpoint
    from ..quant.methods import METHODS
    from ..quant.scan import read_text_file, rows_to_json, run_scan
    from ..quant.scheme import parse_scheme

    if args.tokens <= 0:
        raise UserError(f"--tokens must be positive, got {args.tokens}")
    if args.method not in METHODS:
        raise UserError(f"unknown quantization method {args.method!r} (choose from {', '.join(METHODS)})")
    scheme = parse_scheme(args.quant, args.block_size)
    ckpt = open_checkpoint(args.model, need_tokenizer=True)
    text = read_text_file(args.text) if args.text else None
    opts = {"calib": args.calib, "calib_tokens": args.calib_tokens} if args.method != "rtn" else {}
    rows, base_ppl = run_scan(
        ckpt,
        scheme,
        method=args.method,
        text=text,
        text_source=args.text or "built-in held-out corpus",
        tokens=args.tokens,
        seq_len=args.seq_len,
        per_layer=args.per_layer,
        method_options=opts,
        progress=None if args.json else (lambda m: print(m, file=sys.stderr)),
    )
    if args.json:
        print(json.dumps({"scheme": scheme.name, "method": args.method, "float_ppl": base_ppl,
                          "groups": rows_to_json(rows)}, indent=2))  # fmt: skip
        return 0
    print(
        f"sensitivity of {ckpt.path.name} to {scheme.name} ({args.method}); float perplexity {base_ppl:.3f}"
    )
    print(
        f"{'rank':>4}  {'group':<24} {'tensors':>7} {'params':>11} {'mean KLD':>10} {'top-1':>7} {'d-ppl':>8}"
    )
    for i, r in enumerate(rows, 1):
        print(
            f"{i:>4}  {r.group:<24} {len(r.tensors):>7} {r.params:>11,} {r.kld:>10.3e} {r.top1:>7.3f} {r.delta_ppl:>+8.3f}"
        )
    return 0
