"""qwen2-edge bench ARTIFACT... : speed, memory and roofline of artifacts in their runtimes, side by side."""

from __future__ import annotations

import argparse

from .common import add_kv_cache, add_no_verify, kv_cache_arg, verify_artifacts

HELP = "benchmark artifacts (ONNX folder, GGUF file, HF checkpoint) in their runtimes against the memory roofline"


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "artifacts", nargs="+", metavar="ARTIFACT", help="ONNX folder, .gguf file or HF checkpoint dir"
    )
    p.add_argument(
        "--reference", metavar="MODEL_DIR", help="also measure this checkpoint in transformers (fp32)"
    )
    p.add_argument("--prompt-tokens", type=_positive, default=128, help="prefill length (default 128)")
    p.add_argument("--gen-tokens", type=_positive, default=64, help="decoded tokens per round (default 64)")
    p.add_argument(
        "--threads", type=_positive, default=2, help="threads for runtimes and bandwidth (default 2)"
    )
    p.add_argument("--repeat", type=_positive, default=3, help="timed rounds after one warm-up (default 3)")
    p.add_argument(
        "--contexts",
        metavar="N,N,...",
        help="also measure decode tok/s, ms/token, peak RSS and KV-cache bytes after N cached tokens, for "
        "each N (comma separated, e.g. 512,4096,16384), each in a fresh process sized for it",
    )
    p.add_argument(
        "--window-sweep",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the same at contexts w, 4w, 8w (default: on for sliding-window models without --contexts)",
    )
    add_kv_cache(
        p,
        "KV-cache precision of every artifact's runtime (default: each runtime's own default); the "
        "--reference always runs f32",
    )
    p.add_argument(
        "--sequential",
        action="store_true",
        help="measure artifacts one after another instead of loading all and interleaving their rounds",
    )
    p.add_argument("--json", metavar="OUT", help="write machine + per-artifact results as JSON")
    p.add_argument(
        "--plot",
        metavar="OUT.png",
        help="write a chart of prefill/decode tokens/s (with contexts: decode tok/s and KV MB vs context)",
    )
    p.add_argument("--force", action="store_true", help="overwrite existing --json/--plot outputs")
    add_no_verify(p)


def run(args: argparse.Namespace) -> int:
    import sys

    from ..bench.bandwidth import measure_bandwidth
    from ..bench.measure import BenchOptions
    from ..bench.report import format_table, plot, results_json, write_json
    from ..bench.run import bench_prepared_all, parse_contexts, prepare_artifacts
    from ..fsutil import REPORT_BYTES, preflight

    kv_cache = kv_cache_arg(args)
    contexts = parse_contexts(args.contexts) if args.contexts is not None else ()
    paths = list(args.artifacts) + ([args.reference] if args.reference else [])
    labels = [""] * len(args.artifacts) + (["reference"] if args.reference else [])
    # The float reference is f32 whatever the artifacts' cache.
    kv_caches = [kv_cache] * len(args.artifacts) + (["f32"] if args.reference else [])
    for out in (args.json, args.plot):
        if out:
            preflight(out, args.force, REPORT_BYTES, folder=False)  # before any measuring
    opts = BenchOptions(
        prompt_tokens=args.prompt_tokens,
        gen_tokens=args.gen_tokens,
        threads=args.threads,
        repeat=args.repeat,
        window_sweep=args.window_sweep,
        contexts=contexts,
        kv_cache=kv_cache,
    )
    names = [lab or p for lab, p in zip(labels, paths, strict=True)]
    verify_artifacts(args, list(args.artifacts))
    # Bad paths, cache types a runtime lacks, contexts beyond a model: refused before anything is measured.
    prepared = prepare_artifacts(paths, opts, names, kv_caches)
    bw = measure_bandwidth(opts.threads)
    print(
        f"memory read bandwidth: {bw.gb_s:.1f} GB/s (best of {bw.passes}, {bw.threads} threads)",
        file=sys.stderr,
    )
    results = bench_prepared_all(
        prepared, opts, bw, progress=lambda m: print(m, file=sys.stderr), interleave=not args.sequential
    )
    print(format_table(results))
    if args.json:
        write_json(results_json(results, bw, {"options": opts.to_json()}), args.json, force=True)
    if args.plot:
        plot(results, args.plot, force=True)
    return 0
