"""Time artifacts, each in its own fresh child process, so its peak resident memory is its own.

A child opens its artifact through the runtime registry (or a given Session class), so any runtime with a
Session is measured the same way: one prefill `append(prompt)`, then one `append([token])` per decoded
token, greedy. After loading and one warm-up round, the child waits for commands on stdin: "round" (one
timed round from an empty cache), "sweep" (decode speed at the window contexts), "done". The parent loads
the children of a group one after another, then interleaves their rounds (A, B, A, B, ...), so that
load from other processes on a shared machine falls on every artifact alike and ratios stay meaningful.
Peak RSS is the child's own VmHWM; the RSS just before loading (interpreter plus the runtime's libraries,
imported first) is reported beside it.

    python -m qwen2_edge.bench.measure REQUEST_JSON RESULT_FD   (what the parent runs)
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


@dataclass(frozen=True)
class Target:
    """One artifact to measure: its path, the window contexts to sweep, and optionally a Session class."""

    path: Path
    sweep: tuple[int, ...] = ()
    session: str | None = None  # "module:Class" taking (path, threads=); None: the runtime registry's


class _Child:
    """A measuring child process and the pipe it reports on (one JSON object per line)."""

    def __init__(self, target: Target, opts: BenchOptions) -> None:
        root = str(Path(__file__).resolve().parents[2])  # the tree holding this qwen2_edge package
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        request = {"path": str(target.path), "opts": opts.to_json(), "sweep": list(target.sweep),
                   "session": target.session}  # fmt: skip
        self.target = target
        self.timeout = opts.timeout_s
        self.err = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives as long as the child
        r, w = os.pipe()
        cmd = [sys.executable, "-m", "qwen2_edge.bench.measure", json.dumps(request), str(w)]
        self.proc = subprocess.Popen(
            cmd, env=env, stdin=subprocess.PIPE, stdout=self.err, stderr=self.err, pass_fds=(w,), text=True
        )
        os.close(w)
        self.results = os.fdopen(r, "r")

    def read(self) -> dict[str, Any]:
        import select

        ready, _, _ = select.select([self.results], [], [], self.timeout)
        line = self.results.readline() if ready else ""
        if not line:
            self.kill()
            self.err.seek(0)
            lines = [ln for ln in self.err.read().strip().splitlines() if ln.strip()]
            why = (
                lines[-1] if lines else (f"no answer within {self.timeout:.0f} s" if not ready else "exited")
            )
            raise UserError(f"benchmark child failed: {why}", self.target.path)
        return json.loads(line)

    def ask(self, command: str) -> dict[str, Any]:
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # read() reports why the child is gone
        return self.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        self.kill()
        self.results.close()
        self.err.close()


def measure_group(targets: list[Target], opts: BenchOptions) -> list[RawTiming]:
    """Measure several artifacts with interleaved rounds; each in its own process (loaded one by one)."""
    children: list[_Child] = []
    try:
        ready = []
        for t in targets:  # load sequentially, so load times do not compete
            children.append(_Child(t, opts))
            ready.append(children[-1].read())
        rounds: list[list[dict]] = [[] for _ in children]
        for _ in range(opts.repeat):
            for i, c in enumerate(children):
                rounds[i].append(c.ask("round"))
        sweeps = [c.ask("sweep")["sweep"] if c.target.sweep else {} for c in children]
        finals = [c.ask("done") for c in children]
    finally:
        for c in children:
            c.close()
    return [
        RawTiming(
            runtime=r["runtime"],
            format=r["format"],
            quant=r["quant"],
            load_s=r["load_s"],
            prefill_s=[x["prefill_s"] for x in rs],
            ttft_s=[x["ttft_s"] for x in rs],
            decode_s=[x["decode_s"] for x in rs],
            peak_rss_mb=f["peak_rss_mb"],
            baseline_rss_mb=r["baseline_rss_mb"],
            kv_bytes_per_element=f["kv_bytes_per_element"],
            window_decode_tok_s=sw,
        )
        for r, rs, sw, f in zip(ready, rounds, sweeps, finals, strict=True)
    ]


def measure_in_subprocess(
    path: str | Path,
    opts: BenchOptions,
    sweep_contexts: list[int] | None = None,
    session_target: str | None = None,
) -> RawTiming:
    """One artifact in a fresh interpreter (a group of one)."""
    return measure_group([Target(Path(path), tuple(sweep_contexts or ()), session_target)], opts)[0]


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


def child_main(request: dict[str, Any], result_fd: int) -> None:
    import importlib
    import inspect

    from ..model.builtin import resolve_model_path
    from ..runtimes.registry import detect_format

    report = os.fdopen(result_fd, "w")

    def send(obj: dict[str, Any]) -> None:
        report.write(json.dumps(obj) + "\n")
        report.flush()

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
    send({"runtime": session.runtime, "format": session.format, "quant": getattr(session, "quant", "") or "",
          "load_s": load_s, "baseline_rss_mb": baseline})  # fmt: skip
    for line in sys.stdin:
        command = line.strip()
        if command == "round":
            p, f, d = _round(session, prompt, opts.gen_tokens)
            send({"prefill_s": p, "ttft_s": f, "decode_s": d})
        elif command == "sweep":
            send({"sweep": _sweep(session, prompt, request.get("sweep") or [], opts.window_gen_tokens)})
        elif command == "done":
            kv = getattr(session, "kv_bytes_per_element", None)
            session.close()
            send({"peak_rss_mb": _peak_rss_mb(), "kv_bytes_per_element": float(kv) if kv else None})
            return


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
        child_main(json.loads(sys.argv[1]), int(sys.argv[2]))
    except UserError as e:
        print(str(e), file=sys.stderr)
        sys.exit(2)
