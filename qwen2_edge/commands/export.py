"""qwen2-edge export MODEL --format {onnx,gguf} --quant Q --out PATH."""

from __future__ import annotations

import argparse
import json

HELP = "export a checkpoint to ONNX or GGUF, optionally quantized"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="checkpoint directory, builtin:teacher or hub id org/name[@revision]")
    p.add_argument("--format", required=True, choices=["onnx", "gguf"])
    p.add_argument(
        "--quant",
        default="f32",
        help="onnx: f32,f16,int8,int4,int4_asym; gguf: f32,f16,q8_0,q4_0,q4_1,q5_0,q5_1,q4_k_m,q5_k_m,q6_k",
    )
    p.add_argument("--out", required=True, help="output folder (onnx) or .gguf file")
    p.add_argument("--method", default="rtn", help="quantization method: rtn or gptq")
    p.add_argument(
        "--block-size", type=int, default=None, help="int4/int8 block size (32, 64, 128; GGUF: 32)"
    )
    p.add_argument("--policy", default="default", help="precision policy (default, all, attn-int8)")
    p.add_argument("--override", action="append", default=[], metavar="PATTERN=TYPE",
                   help="per-tensor override, e.g. 'lm_head.weight=int4' or '*.self_attn.*=float'")  # fmt: skip
    p.add_argument(
        "--calib", action="append", default=[], metavar="FILE", help="calibration text file(s) for gptq"
    )
    p.add_argument("--calib-tokens", type=int, default=8192, help="calibration tokens for gptq")
    p.add_argument(
        "--kv-cache",
        choices=["f32", "f16", "q8_0", "q4_0"],
        default=None,
        help="onnx only: the KV-cache type written into the graph, which onnxruntime-genai runs (default "
        "f32; qwen2-edge run/bench/check can switch an f32 folder with their own --kv-cache)",
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument(
        "--json", action="store_true", help="print the export result (with the precision plan) as JSON"
    )


def run(args: argparse.Namespace) -> int:
    from ..exporters.api import export_model

    result = export_model(
        args.model,
        fmt=args.format,
        quant=args.quant,
        out=args.out,
        method=args.method,
        block_size=args.block_size,
        policy=args.policy,
        overrides=args.override,
        calib=args.calib,
        calib_tokens=args.calib_tokens,
        threads=args.threads,
        force=args.force,
        kv_cache=args.kv_cache,
    )
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(
            f"wrote {result.path} ({result.format} {result.quant}, {result.bytes / 2**20:.1f} MiB, "
            f"{result.bits_per_weight:.2f} bits/weight, {result.seconds:.1f} s)"
        )
        for note in result.notes:
            print(f"  note: {note}")
    return 0
