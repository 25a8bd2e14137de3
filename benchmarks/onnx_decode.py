"""Decode and prefill tokens/s of our int4 ONNX export beside onnxruntime-genai's model builder, same run.

    python -m benchmarks.onnx_decode [--ckpt-dir /work/bench-ckpt] [--out bench-out/onnx] [--threads 2]
                                     [--prompt 128] [--new 64] [--repeats 3] [--skip-moe] [--with-acc0]

Qwen2-0.5B shape (random weights, `python -m benchmarks.checkpoints DIR qwen2-0.5b`):
  - builder: `python -m onnxruntime_genai.models.builder -i CKPT -o OUT -p int4 -e cpu`, run in onnxruntime-genai
  - ours, int4 with an int4 lm_head (the builder's precision) and with the default policy's int8
    embeddings / lm_head, accuracy_level 4 (int8 activations; --with-acc0 adds float32 activations),
    each run in onnxruntime-genai and in our OnnxSession.
MoE shape (`... moe`): our int4 export (genai + OnnxSession) vs transformers eager (float32) decode.
Every engine gets the same prompt, `threads` intra-op threads, greedy decoding; the best of `repeats`.
Artifacts are cached in --out (delete it to rebuild). Prints a table; no thresholds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def export_ours(ckpt_dir: Path, out: Path, accuracy_level: int, overrides: list[str]) -> Path:
    if (out / "model.onnx").is_file():
        return out
    from qwen2_edge.exporters.api import make_policy, quantize_for_export
    from qwen2_edge.exporters.onnx import export_onnx
    from qwen2_edge.model.checkpoint import open_checkpoint
    from qwen2_edge.quant import parse_scheme

    ckpt = open_checkpoint(ckpt_dir)
    t0 = time.perf_counter()
    qmodel = quantize_for_export(ckpt, parse_scheme("int4"), policy=make_policy("default", overrides))
    export_onnx(ckpt, out, "int4", qmodel=qmodel, accuracy_level=accuracy_level)
    print(f"  exported {out.name} in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def build_with_genai_builder(ckpt_dir: Path, out: Path) -> Path:
    if (out / "genai_config.json").is_file():
        return out
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(ckpt_dir), "-o", str(out)]
    cmd += ["-p", "int4", "-e", "cpu", "-c", str(out.parent / "builder-cache")]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    print(f"  built {out.name} with the genai model builder in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.name.startswith("model.onnx"))


def set_threads(folder: Path, threads: int) -> None:
    """Both folders get the same intra-op thread count through their genai_config.json."""
    path = folder / "genai_config.json"
    cfg = json.loads(path.read_text())
    cfg["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
    path.write_text(json.dumps(cfg, indent=2))


def time_genai(folder: Path, prompt: list[int], new: int) -> tuple[float, float]:
    import onnxruntime_genai as og

    model = og.Model(str(folder))

    def run() -> tuple[float, float]:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(prompt) + new, do_sample=False)
        gen = og.Generator(model, params)
        t0 = time.perf_counter()
        gen.append_tokens(prompt)
        t1 = time.perf_counter()
        for _ in range(new):
            gen.generate_next_token()
        t2 = time.perf_counter()
        return len(prompt) / (t1 - t0), new / (t2 - t1)

    run()  # warm-up (kernel prepacking, allocator)
    return run


def time_session(session, prompt: list[int], new: int) -> Callable[[], tuple[float, float]]:
    def run() -> tuple[float, float]:
        session.reset()
        t0 = time.perf_counter()
        logits = session.append(prompt)[-1]
        t1 = time.perf_counter()
        for _ in range(new):
            logits = session.append([int(np.argmax(logits))])[-1]
        t2 = time.perf_counter()
        return len(prompt) / (t1 - t0), new / (t2 - t1)

    run()
    return run


def interleaved_steps(
    folders: dict[str, Path], kv: tuple[int, int], threads: int, prompt: int, steps: int
) -> None:
    """The graphs alone in plain onnxruntime, alternating engines at every step (decode with a `prompt`-long
    past, then whole-prompt prefills): on a loaded machine this is the fairest ratio of the lot."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sessions = {k: ort.InferenceSession(str(f / "model.onnx"), opts) for k, f in folders.items()}
    rng = np.random.default_rng(0)
    print(f"\ninterleaved steps, plain onnxruntime, {threads} threads (median tokens/s)")
    for label, past, new, rounds in (
        ("decode", prompt, 1, steps),
        ("prefill", 0, prompt, max(4, steps // 8)),
    ):
        feeds = {}
        for k, sess in sessions.items():
            f = {i.name: rng.random((1, kv[0], past, kv[1]), dtype=np.float32)
                 for i in sess.get_inputs() if i.name.startswith("past_key_values.")}  # fmt: skip
            f["input_ids"] = np.full((1, new), 5, np.int64)
            f["attention_mask"] = np.ones((1, past + new), np.int64)
            feeds[k] = f
        times: dict[str, list[float]] = {k: [] for k in sessions}
        for _ in range(rounds + 2):
            for k, sess in sessions.items():
                t0 = time.perf_counter()
                sess.run(["logits"], feeds[k])
                times[k].append(time.perf_counter() - t0)
        base = new / np.median(times[next(iter(sessions))][2:])
        for k, t in times.items():
            rate = new / np.median(t[2:])
            print(f"  {label:8} {k:42} {rate:8.2f} tok/s {rate / base:6.2f}x")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt-dir", type=Path, default=Path("/work/bench-ckpt"))
    ap.add_argument("--out", type=Path, default=Path("bench-out/onnx"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-moe", action="store_true")
    ap.add_argument("--steps", type=int, default=60, help="decode steps per engine in the interleaved A/B")
    ap.add_argument(
        "--skip-variants", action="store_true", help="only our int4-lm_head export vs the builder"
    )
    ap.add_argument("--with-acc0", action="store_true", help="also accuracy_level=0 (float32 activations)")
    args = ap.parse_args(argv)

    from benchmarks.checkpoints import bench_checkpoint
    from qwen2_edge.model.spec import read_spec
    from qwen2_edge.runtimes.onnxruntime import OnnxSession

    args.out.mkdir(parents=True, exist_ok=True)
    prompt = [int(t) for t in np.random.default_rng(0).integers(0, 300, size=args.prompt)]
    runners: list[tuple[str, str, Callable[[], tuple[float, float]], int]] = []  # model, engine, run, bytes

    dense = bench_checkpoint("qwen2-0.5b", args.ckpt_dir / "qwen2-0.5b")
    print(f"Qwen2-0.5B shape: {dense}", flush=True)
    builder = build_with_genai_builder(dense, args.out / "builder-int4")
    int4_head = ["model.embed_tokens.weight=int4"]  # tied: the table is the lm_head
    variants = [("ours int4 acc4 lm_head int4", 4, int4_head)]
    if not args.skip_variants:
        variants.append(("ours int4 acc4", 4, []))  # default policy: embeddings / lm_head int8
    if args.with_acc0:  # float32 activations; int8 MatMulNBits has no fast fp32 kernel, hence int4 head
        variants.append(("ours int4 acc0 lm_head int4", 0, int4_head))
    folders = {"genai builder int4": builder}
    for label, level, overrides in variants:
        folders[label] = export_ours(dense, args.out / label.replace(" ", "-"), level, overrides)
    for label, folder in folders.items():
        set_threads(folder, args.threads)
        runners.append(
            ("qwen2-0.5b", f"{label} / genai", time_genai(folder, prompt, args.new), folder_bytes(folder))
        )
        if label.startswith("ours"):
            session = OnnxSession(folder, threads=args.threads)
            run = time_session(session, prompt, args.new)
            runners.append(("qwen2-0.5b", f"{label} / OnnxSession", run, folder_bytes(folder)))

    if not args.skip_moe:
        from qwen2_edge.runtimes.reference import ReferenceSession

        moe = bench_checkpoint("moe", args.ckpt_dir / "moe")
        print(f"MoE shape: {moe}", flush=True)
        ours = export_ours(moe, args.out / "moe-ours-int4-acc4", 4, [])
        set_threads(ours, args.threads)
        runners.append(
            ("moe", "ours int4 acc4 / genai", time_genai(ours, prompt, args.new), folder_bytes(ours))
        )
        run = time_session(OnnxSession(ours, threads=args.threads), prompt, args.new)
        runners.append(("moe", "ours int4 acc4 / OnnxSession", run, folder_bytes(ours)))
        run = time_session(ReferenceSession(moe, threads=args.threads), prompt, args.new)
        runners.append(("moe", "transformers eager f32", run, 0))

    spec = read_spec(dense / "config.json")
    interleaved_steps(folders, (spec.num_kv_heads, spec.head_dim), args.threads, args.prompt, args.steps)

    # Round-robin over the engines, best of `repeats` each: load from other processes on a shared
    # machine then hits every engine alike instead of whichever happened to run during a busy minute.
    results: dict[tuple[str, str], list[tuple[float, float]]] = {(m, e): [] for m, e, _, _ in runners}
    for r in range(args.repeats):
        for model, engine, run, _ in runners:
            results[model, engine].append(run())
            print(f"  round {r + 1}: {model} {engine}: {results[model, engine][-1]}", flush=True)
    rows = [
        (
            model,
            engine,
            max(p for p, _ in results[model, engine]),
            max(d for _, d in results[model, engine]),
            n,
        )
        for model, engine, _, n in runners
    ]

    base = {m: next(r[3] for r in rows if r[0] == m) for m in {r[0] for r in rows}}
    base["moe"] = next((r[3] for r in rows if r[1] == "transformers eager f32"), 1.0)
    print(
        f"\n{args.threads} threads, {args.prompt}-token prompt, {args.new} generated, best of {args.repeats}"
    )
    print(f"{'model':11} {'engine':42} {'prefill tok/s':>13} {'decode tok/s':>12} {'vs base':>8} {'MiB':>7}")
    for model, engine, pre, dec, nbytes in rows:
        ratio = dec / base[model]
        print(f"{model:11} {engine:42} {pre:13.1f} {dec:12.1f} {ratio:7.2f}x {nbytes / 2**20:7.0f}")
    print("vs base: decode tokens/s over the genai builder's (qwen2-0.5b) / transformers eager's (moe)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
