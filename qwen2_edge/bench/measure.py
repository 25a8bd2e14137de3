"""Time one artifact in a fresh child process, so its peak resident memory is its own.

The child opens the artifact through the runtime registry (`open_session(path, threads)`), so any runtime
with a Session is measured the same way: one prefill `append(prompt)`, then one `append([token])` per
decoded token, greedy. A warm-up round runs first; then `repeat` timed rounds, each from an empty cache.
Peak RSS is the child's own `ru_maxrss`; the RSS just before loading (interpreter plus the runtime's
libraries, imported first) is reported beside it.

    python -m qwen2_edge.bench.measure REQUEST_JSON OUT_JSON   (what the parent runs)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError

PREFILL_CHUNK = 512  # tokens per append when filling a long context for the window sweep


@dataclass(frozen=True)
class BenchOptions:
    prompt_tokens: int = 128
    gen_tokens: int = 64
    threads: int = 2
    repeat: int = 3
    warmup_tokens: int = 8  # decode steps in the warm-up round
    window_sweep: bool | None = None  # decode speed at w, 4w, 8w; None: when the model has windows
    window_gen_tokens: int = 16  # tokens decoded at each sweep context
    timeout_s: float = 1800.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RawTiming:
    """What the child measured; BenchResult adds file size, bytes per token and the roofline."""

    runtime: str
    format: str
    quant: str
    load_s: float
    prefill_s: list[float]
    ttft_s: list[float]
    decode_s: list[float]
    peak_rss_mb: float
    baseline_rss_mb: float
    kv_bytes_per_element: float | None
    window_decode_tok_s: dict[str, float]


def measure_in_subprocess(
    path: str | Path,
    opts: BenchOptions,
    sweep_contexts: list[int] | None = None,
    session_target: str | None = None,
) -> RawTiming:
    """Run the measurement of `path` in a fresh interpreter and return its timings.

    session_target ("module:Class", a Session taking (path, threads=)) measures the artifact in another
    runtime than the registry's, e.g. onnxruntime-genai over an ONNX folder in benchmarks/.
    """
    root = str(Path(__file__).resolve().parents[2])  # the tree holding this qwen2_edge package
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    request = {
        "path": str(path),
        "opts": opts.to_json(),
        "sweep": sweep_contexts or [],
        "session": session_target,
    }
    with tempfile.TemporaryDirectory(prefix="qwen2-edge-bench-") as tmp:
        out = Path(tmp) / "timing.json"
        cmd = [sys.executable, "-m", "qwen2_edge.bench.measure", json.dumps(request), str(out)]
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=opts.timeout_s)
        except subprocess.TimeoutExpired:
            raise UserError(f"benchmark did not finish within {opts.timeout_s:.0f} s", path) from None
        if proc.returncode != 0 or not out.is_file():
            lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
            last = lines[-1] if lines else f"exit status {proc.returncode}"
            raise UserError(f"benchmark child failed: {last}", path)
        return RawTiming(**json.loads(out.read_text()))


# -- the child ----------------------------------------------------------------------------------------
def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    """This process's peak RSS since exec (VmHWM). Not ru_maxrss: Linux carries the parent's high-water
    mark into a child's ru_maxrss across fork + exec, so a child of a large parent would report the parent."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _prompt(session, n: int) -> list[int]:
    """n real tokens: held-out corpus text through the artifact's own tokenizer, repeated if short."""
    from ..data.corpus import heldout_text

    ids = session.encode(heldout_text()[: 8 * n + 64])
    if not ids:
        raise UserError("the tokenizer produced no tokens", session.path)
    while len(ids) < n:
        ids = ids + ids
    return ids[:n]


def _round(session, prompt: list[int], gen: int) -> tuple[float, float, float]:
    """One greedy round from an empty cache: (prefill s, time to first token s, decode s for `gen`)."""
    import numpy as np

    session.reset()
    t0 = time.perf_counter()
    logits = session.append(prompt)
    t1 = time.perf_counter()
    tok = int(np.argmax(logits[-1]))
    t_first = time.perf_counter()
    for _ in range(gen):
        tok = int(np.argmax(session.append([tok])[-1]))
    t2 = time.perf_counter()
    return t1 - t0, t_first - t0, t2 - t_first


def _sweep(session, prompt: list[int], contexts: list[int], gen: int) -> dict[str, float]:
    """Decode tokens/s once `ctx` positions are cached, for each ctx."""
    import numpy as np

    out: dict[str, float] = {}
    for ctx in contexts:
        ids = (prompt * (ctx // len(prompt) + 1))[:ctx]
        session.reset()
        logits = None
        for i in range(0, ctx, PREFILL_CHUNK):
            logits = session.append(ids[i : i + PREFILL_CHUNK])
        tok = int(np.argmax(logits[-1]))
        t0 = time.perf_counter()
        for _ in range(gen):
            tok = int(np.argmax(session.append([tok])[-1]))
        out[str(ctx)] = gen / (time.perf_counter() - t0)
    return out


def child_main(request: dict[str, Any], out: Path) -> None:
    import importlib
    import inspect

    from ..model.builtin import resolve_model_path
    from ..runtimes.registry import detect_format

    opts = BenchOptions(**request["opts"])
    path = resolve_model_path(request["path"])
    target = request.get("session") or detect_format(path).target
    module, cls = target.split(":")
    factory = getattr(importlib.import_module(module), cls)  # runtime libraries count in the baseline
    # A runtime that sizes its cache up front is given the longest context this run uses (+ slack), so
    # every artifact in a runtime gets the same cache size, whatever that runtime's default.
    longest = 8 + max(
        [opts.prompt_tokens + opts.gen_tokens] + [c + opts.window_gen_tokens for c in request["sweep"]]
    )
    kwargs: dict[str, Any] = {"threads": opts.threads}
    if "n_ctx" in inspect.signature(factory).parameters:
        kwargs["n_ctx"] = longest
    baseline = _rss_mb()
    t0 = time.perf_counter()
    session = factory(path, **kwargs)
    if hasattr(session, "reserve"):
        session.reserve(longest)
    load_s = time.perf_counter() - t0
    prompt = _prompt(session, opts.prompt_tokens)
    _round(session, prompt, min(opts.warmup_tokens, opts.gen_tokens))
    prefill, ttft, decode = [], [], []
    for _ in range(opts.repeat):
        p, f, d = _round(session, prompt, opts.gen_tokens)
        prefill.append(p)
        ttft.append(f)
        decode.append(d)
    sweep = _sweep(session, prompt, request.get("sweep") or [], opts.window_gen_tokens)
    kv = getattr(session, "kv_bytes_per_element", None)
    timing = RawTiming(
        runtime=session.runtime,
        format=session.format,
        quant=getattr(session, "quant", "") or "",
        load_s=load_s,
        prefill_s=prefill,
        ttft_s=ttft,
        decode_s=decode,
        peak_rss_mb=_peak_rss_mb(),
        baseline_rss_mb=baseline,
        kv_bytes_per_element=float(kv) if kv else None,
        window_decode_tok_s=sweep,
    )
    session.close()
    out.write_text(json.dumps(asdict(timing)))


def _exit_with_parent() -> None:
    """A benchmark child must not outlive the bench that started it (and keep loading the cores)."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


if __name__ == "__main__":
    _exit_with_parent()
    try:
        child_main(json.loads(sys.argv[1]), Path(sys.argv[2]))
    except UserError as e:
        print(str(e), file=sys.stderr)
        sys.exit(2)
