"""Our GGUF Q4_0 vs llama.cpp's own converter + quantizer on the same checkpoint, side by side in one run.

    python -m benchmarks.gguf_decode [--ckpt /work/bench-ckpt/qwen2-0.5b] [--threads 2] [--work DIR]

Both files run in llama-cpp-python with identical settings (2 threads, default f16 KV cache). Prefill
rotates the file order per round and decode rotates it per token, so the neighbours' load on a shared
machine hits every session alike; llama.cpp's file also runs in a second session (A/A) to show the noise
floor. The table shows medians and ratios, and whether the two files hold the same tensors and bytes.

llama.cpp's side: convert_hf_to_gguf.py from the llama-cpp-python source distribution, fetched and run by
benchmarks/peers.py (never vendored; its pre-tokenizer detection is told "qwen2" in a wrapper process,
the file is not edited), then `llama_model_quantize` to Q4_0. The converter needs `sentencepiece`
importable (`pip install sentencepiece`, the `bench` extra; not a runtime dependency).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

LLAMA_CPP_PYTHON = "0.3.36"
# llama.cpp's OpenMP threads spin while waiting; on a shared 2-core machine that costs ~10x in decode
# speed for both files alike. Passive waiting (set before llama_cpp is imported) keeps numbers meaningful.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def llama_cpp_q4_0(ckpt: Path, out: Path, threads: int) -> None:
    """llama.cpp's own pipeline: convert_hf_to_gguf.py to f16, then llama_model_quantize to Q4_0."""
    from . import peers

    f16 = out.with_suffix(".f16.gguf")
    for run in (
        lambda: peers.run_converter(ckpt, f16, "f16"),
        lambda: peers.run_quantize(f16, out, "q4_0", threads),
    ):
        stats = run()
        if not stats.ok:
            raise SystemExit(f"{stats.label} failed:\n{stats.output_tail}")
    f16.unlink()


def ours_q4_0(ckpt: Path, out: Path, threads: int) -> None:
    from qwen2_edge.exporters.api import export_model

    export_model(ckpt, "gguf", "q4_0", out, threads=threads, force=True)


def tensor_types(path: Path) -> dict[str, int]:
    from gguf import GGUFReader

    counts: dict[str, int] = {}
    for t in GGUFReader(str(path)).tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + int(t.n_elements)
    return counts


def compare_layout(a: Path, b: Path) -> str:
    """Same tensors, types and shapes? And how many of the stored bytes are identical?"""
    import numpy as np
    from gguf import GGUFReader

    ta = {t.name: t for t in GGUFReader(str(a)).tensors}
    tb = {t.name: t for t in GGUFReader(str(b)).tensors}
    if set(ta) != set(tb):
        return f"tensor names differ: {sorted(set(ta) ^ set(tb))[:5]}"
    bad = [n for n in ta if ta[n].tensor_type != tb[n].tensor_type or list(ta[n].shape) != list(tb[n].shape)]
    if bad:
        return f"types/shapes differ for {bad[:5]}"
    same = total = 0
    for n in ta:
        x = np.asarray(ta[n].data).view(np.uint8).reshape(-1)
        y = np.asarray(tb[n].data).view(np.uint8).reshape(-1)
        same += int((x == y).sum())
        total += x.size
    return f"same {len(ta)} tensors, types and shapes; {100 * same / total:.2f}% of tensor bytes identical"


class Timer:
    """One loaded file: prefill and decode tokens/s on fixed tokens (no sampling in the timed loop)."""

    def __init__(self, path: Path, threads: int, n_ctx: int) -> None:
        import llama_cpp

        from qwen2_edge.runtimes.llamacpp import quiet_llama_logs

        quiet_llama_logs()
        self.llama_cpp = llama_cpp
        self.llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=512,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )

    def _clear(self) -> None:
        self.llm.reset()
        self.llama_cpp.llama_memory_clear(self.llama_cpp.llama_get_memory(self.llm.ctx), True)

    def prefill(self, ids: list[int]) -> float:
        self._clear()
        t0 = time.perf_counter()
        self.llm.eval(ids)
        return len(ids) / (time.perf_counter() - t0)

    def start_decode(self, prompt: list[int]) -> None:
        self._clear()
        self.llm.eval(prompt)

    def step(self, token: int) -> float:
        """Seconds for one decode step (one token through the KV cache)."""
        t0 = time.perf_counter()
        self.llm.eval([token])
        return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", type=Path, default=Path("/work/bench-ckpt/qwen2-0.5b"))
    ap.add_argument(
        "--work", type=Path, default=None, help="where the two GGUF files go (default: a temp dir)"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill", type=int, default=128)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reuse", action="store_true", help="time the files already in --work (no re-export)")
    ap.add_argument(
        "--no-aa", action="store_true", help="skip the noise floor (llama.cpp's file loaded twice)"
    )
    args = ap.parse_args(argv)
    if not (args.ckpt / "config.json").is_file():
        print(f"{args.ckpt}: no checkpoint; make it with `python -m benchmarks.checkpoints DIR qwen2-0.5b`")
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="gguf-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    files = {"qwen2-edge": work / "ours-q4_0.gguf", "llama.cpp": work / "llamacpp-q4_0.gguf"}
    t_ours = t_theirs = float("nan")
    if not (args.reuse and all(p.is_file() for p in files.values())):
        t0 = time.perf_counter()
        ours_q4_0(args.ckpt, files["qwen2-edge"], args.threads)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        llama_cpp_q4_0(args.ckpt, files["llama.cpp"], args.threads)
        t_theirs = time.perf_counter() - t0

    ids = list(range(1000, 1000 + args.prefill))
    # Two sessions per file, created in A B B A order so slow drift during setup cancels; a file's speed is
    # the mean of its two sessions; the ratio of llama.cpp's two sessions (A/A) shows the noise floor.
    runs = {
        "qwen2-edge": files["qwen2-edge"],
        "llama.cpp": files["llama.cpp"],
        "llama.cpp #2": files["llama.cpp"],
        "qwen2-edge #2": files["qwen2-edge"],
    }
    if args.no_aa:
        runs = dict(files)
    # An untimed session is created first and kept open: the first session created in a process measured
    # slower than later ones on the same file (16.9 vs 18.9 tok/s), whichever file it held.
    spare = Timer(files["llama.cpp"], args.threads, n_ctx=32)
    timers = {k: Timer(p, args.threads, n_ctx=args.prefill + args.decode + 8) for k, p in runs.items()}
    res: dict[str, dict[str, list[float]]] = {k: {"prefill": [], "decode": []} for k in runs}
    for t in timers.values():  # warm-up: page the weights in, untimed
        t.prefill(ids[:32])
        t.start_decode(ids[:16])
        t.step(ids[0])
    pairs = list(timers.items())
    for r in range(args.rounds):
        # Prefill alternates file order per round; decode rotates the order per token, so the neighbours'
        # load on this shared machine hits every session alike.
        for k, t in pairs[r % len(pairs) :] + pairs[: r % len(pairs)]:
            res[k]["prefill"].append(t.prefill(ids))
        for _, t in pairs:
            t.start_decode(ids[:16])
        secs = dict.fromkeys(timers, 0.0)
        for i in range(args.decode):
            for k, t in pairs[i % len(pairs) :] + pairs[: i % len(pairs)]:
                secs[k] += t.step(ids[i % 16])
        for k in timers:
            res[k]["decode"].append(args.decode / secs[k])
    med = {k: {m: statistics.median(v) for m, v in r.items()} for k, r in res.items()}
    both = {  # per file: the mean of its sessions, round by round, then the median over rounds
        f: {
            m: statistics.median(
                statistics.mean(x) for x in zip(*(res[k][m] for k in runs if k.startswith(f)), strict=True)
            )
            for m in ("prefill", "decode")
        }
        for f in files
    }

    print(f"\nGGUF Q4_0 of {args.ckpt} - llama-cpp-python {LLAMA_CPP_PYTHON}, {args.threads} threads, "
          f"prefill {args.prefill} tokens, decode {args.decode} tokens, median of {args.rounds} interleaved rounds, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")  # fmt: skip
    print(
        f"{'file':<12} {'MiB':>8} {'export s':>9} {'prefill tok/s':>14} {'decode tok/s':>13}  tensor types (elements)"
    )
    for k, p in runs.items():
        types = ", ".join(f"{t} {n / 1e6:.1f}M" for t, n in sorted(tensor_types(p).items()))
        secs = {"qwen2-edge": t_ours, "llama.cpp": t_theirs}.get(k, float("nan"))
        print(f"{k:<12} {p.stat().st_size / 2**20:>8.1f} {secs:>9.1f} {med[k]['prefill']:>14.1f} "
              f"{med[k]['decode']:>13.2f}  {types}")  # fmt: skip
    print(f"layout: {compare_layout(files['qwen2-edge'], files['llama.cpp'])}")
    for m in ("prefill", "decode"):
        line = f"ratio {m}: {both['qwen2-edge'][m] / both['llama.cpp'][m]:.3f}x (target >= 0.97x)"
        if "llama.cpp #2" in med:
            line += f"; noise floor (llama.cpp vs itself) {med['llama.cpp #2'][m] / med['llama.cpp'][m]:.3f}x"
        print(line)
    for t in (spare, *timers.values()):
        t.llm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
