"""qwen2-edge check MODEL_DIR ARTIFACT...: accuracy of each artifact against the float reference, gated."""

from __future__ import annotations

import argparse
import json
import sys

from .common import add_kv_cache, add_no_verify, kv_cache_arg, verify_artifacts

HELP = "validate artifacts against the float reference (perplexity, KL divergence, top-1, greedy), with gates"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..validation.gates import GATES

    p.add_argument("model", help="the float reference: checkpoint directory, builtin:teacher or hub id org/name[@revision]")
    p.add_argument(
        "artifacts", nargs="+", metavar="ARTIFACT", help="ONNX folder, GGUF file or checkpoint dir"
    )
    p.add_argument(
        "--text", metavar="FILE", help="UTF-8 text to evaluate on (default: built-in held-out corpus)"
    )
    p.add_argument("--ctx", type=int, default=None,
                   help="tokens per chunk (default 512, or 2x the sliding window when larger)")  # fmt: skip
    p.add_argument("--chunks", type=int, default=8, help="number of chunks (default 8)")
    p.add_argument("--json", metavar="OUT.json", help="write every statistic as JSON")
    p.add_argument("--report", metavar="OUT.html", help="write a self-contained HTML report with plots")
    for g in GATES:
        p.add_argument(
            g.flag, dest=g.name, type=float, default=None, help=f"{g.help} (default {g.default:g})"
        )
    p.add_argument("--greedy-prompts", type=int, default=4, help="prompts for greedy agreement (default 4)")
    p.add_argument("--greedy-tokens", type=int, default=32, help="tokens generated per prompt (default 32)")
    p.add_argument("--threads", type=int, default=None)
    add_kv_cache(
        p,
        "the deployed KV cache each artifact is also reported at (default: its runtime's own); the gates "
        "read the f32-cache row, which measures the weights alone",
    )
    p.add_argument("--force", action="store_true", help="overwrite existing --json / --report files")
    add_no_verify(p)


def _num(x: float) -> str:
    return f"{x:.4f}" if abs(x) < 1e5 else f"{x:.4e}"


def print_table(res, out=None) -> None:
    """llama.cpp-perplexity-style statistics, one block per artifact; a failing gate's value is starred."""
    out = out or sys.stdout  # resolved per call: sys.stdout may have been replaced since import
    ref = res.reference
    print(
        f"reference {ref['path']} ({ref['runtime']}): PPL = {_num(ref['ppl'])} +/- {_num(ref['ppl_err'])} "
        f"over {ref['tokens']} tokens ({res.chunks} chunks x ctx {res.ctx}, scored from {res.score_from})",
        file=out,
    )
    for a in res.artifacts:
        s, bad = a.summary, set(a.failed)

        def star(gate: str, bad: set[str] = bad) -> str:
            return " *FAIL*" if gate in bad else ""

        greedy = ", ".join("=" if d is None else str(d) for d in a.greedy_first_diff)
        print(
            f"\n{'PASS' if a.passed else 'FAIL'}  {a.path}  [{a.format}, {a.runtime}, {a.quant}, "
            f"KV cache {a.kv_cache}]",
            file=out,
        )
        lines = [
            f"PPL                 {_num(s['ppl'])} +/- {_num(s['ppl_err'])}",
            f"dPPL                {s['delta_ppl']:+.4g} +/- {s['delta_ppl_err']:.4g} "
            f"({100 * s['delta_ppl_rel']:+.3f}%){star('max_dppl')}",
            f"mean KLD            {s['kld_mean']:.6g} +/- {s['kld_err']:.3g}{star('max_kld')}",
            f"KLD p99 / p99.9/max {s['kld_p99']:.4g} / {s['kld_p999']:.4g} / {s['kld_max']:.4g}",
            f"same top-1          {100 * s['top1_agreement']:.3f} +/- {100 * s['top1_err']:.3f} %{star('min_top1')}",
            f"RMS dp / mean dp    {100 * s['rms_dp']:.4f} % / {100 * s['mean_dp']:+.4f} +/- {100 * s['mean_dp_err']:.4f} %",
            f"max |dlogit|        {s['max_dlogit']:.4g}",
            f"decode vs prefill   KLD max {s['decode_kld_max']:.3g}, max |dlogit| {s['decode_max_dlogit']:.3g}"
            f"{star('max_decode_kld')}",
            f"greedy match        {100 * a.greedy_match:.0f}% of prompts (first difference: {greedy or '-'})",
        ]
        if not a.gates.get("finite", True):
            lines.append("non-finite logits    *FAIL*")
        if not a.tokenizer_match:
            lines.append("tokenizer           differs from the reference's on the sample text")
        lines += _deployed_lines(a)
        for line in lines:
            print("  " + line, file=out)
    for note in res.notes:
        print(f"note: {note}", file=out)
    limits = ", ".join(f"{k}={v:g}" for k, v in res.limits.items())
    n_fail = sum(not a.passed for a in res.artifacts)
    verdict = "all artifacts pass" if res.passed else f"{n_fail} of {len(res.artifacts)} artifact(s) FAIL"
    print(f"\n{verdict} (gates: {limits}; read with an f32 KV cache)", file=out)


def _deployed_lines(a) -> list[str]:
    """The artifact at its deployed KV cache, under its gated (f32-cache) statistics."""
    d = a.deployed
    if d is None:
        return []
    if not d.measured:
        return [f"at deployed KV cache ({d.kv_cache}): the rows above"]
    s = d.summary
    greedy = ", ".join("=" if x is None else str(x) for x in d.greedy_first_diff)
    return [
        f"at deployed KV cache ({d.kv_cache}), each scored token decoded from the cache (not gated):",
        f"  mean KLD          {s['kld_mean']:.6g} +/- {s['kld_err']:.3g}   (p99 {s['kld_p99']:.4g}, "
        f"max {s['kld_max']:.4g})",
        f"  dPPL              {s['delta_ppl']:+.4g} +/- {s['delta_ppl_err']:.4g} ({100 * s['delta_ppl_rel']:+.3f}%)",
        f"  same top-1        {100 * s['top1_agreement']:.3f} +/- {100 * s['top1_err']:.3f} %",
        f"  max |dlogit|      {s['max_dlogit']:.4g}",
        f"  greedy match      {100 * d.greedy_match:.0f}% of prompts (first difference: {greedy or '-'})",
    ]


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import UserError
    from ..fsutil import REPORT_BYTES, atomic_file, preflight
    from ..validation.compare import CheckOptions, check_artifacts
    from ..validation.gates import GATES

    for flag, value, least in (("--chunks", args.chunks, 1), ("--greedy-prompts", args.greedy_prompts, 0),
                               ("--greedy-tokens", args.greedy_tokens, 1)):  # fmt: skip
        if value < least:
            raise UserError(f"{flag} must be at least {least}, got {value}")
    for out in (args.json, args.report):
        if out:
            preflight(out, args.force, REPORT_BYTES, folder=False)  # fail before the expensive part
    opts = CheckOptions(
        ctx=args.ctx,
        chunks=args.chunks,
        limits={g.name: v for g in GATES if (v := getattr(args, g.name)) is not None},
        greedy_prompts=args.greedy_prompts,
        greedy_new_tokens=args.greedy_tokens,
        threads=args.threads,
        progress=None,
        kv_cache=kv_cache_arg(args),
    )
    if args.text:
        path = Path(args.text)
        try:
            opts.text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError("no such file", path) from None
        except (UnicodeDecodeError, IsADirectoryError, PermissionError) as e:
            raise UserError(f"cannot read text ({type(e).__name__})", path) from None
        opts.text_source = str(path)
    verify_artifacts(args, list(args.artifacts))
    res = check_artifacts(args.model, args.artifacts, opts)
    print_table(res)
    if args.json:
        with atomic_file(args.json, force=args.force) as tmp:
            tmp.write_text(json.dumps(res.to_json(), indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.report:
        from ..validation.report_html import write_report

        write_report(res, args.report, force=args.force)
        print(f"wrote {args.report}")
    return 0 if res.passed else 1
