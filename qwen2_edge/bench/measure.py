"""Time artifacts, each in its own fresh child process, so its peak resident memory is its own.

A child opens its artifact through the runtime registry (or a given Session class), so any runtime with a
Session is measured the same way: one prefill `append(prompt)`, then one `append([token])` per decoded
token, greedy. After loading and one warm-up round, the child waits for commands on stdin: "round" (one
timed round from an empty cache), "done". The parent loads the children of a group one after another,
then interleaves their rounds (A, B, A, B, ...), so that load from other processes on a shared machine
falls on every artifact alike and ratios stay meaningful. Peak RSS is the child's own VmHWM; the RSS just
before loading (interpreter plus the runtime's libraries, imported first) is reported beside it.

Long contexts (`bench --contexts`, and the window sweep w, 4w, 8w) get one fresh child per artifact and
context, its session sized for that context (n_ctx = context + decoded tokens + slack), so its peak RSS is
what that deployment needs. Its commands: "fill" (reset, then feed `context` tokens in chunks of
PREFILL_CHUNK: timed as prefill, then the runtime's KV-cache bytes), "decode" (one timed round of
`context_gen_tokens` greedy steps after what is cached), "done". The artifacts measured at one context are
filled one after another and their decode rounds interleaved.

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

PREFILL_CHUNK = 512  # tokens per append when filling a long context (llama.cpp's n_batch)
CONTEXT_SLACK = 8  # positions a session holds beyond what a measurement feeds it


@dataclass(frozen=True)
class BenchOptions:
    prompt_tokens: int = 128
    gen_tokens: int = 64
    threads: int = 2
    repeat: int = 3
    warmup_tokens: int = 8  # decode steps in the warm-up round
    window_sweep: bool | None = None  # contexts w, 4w, 8w; None: when the model has windows (and no contexts)
    contexts: tuple[int, ...] = ()  # decode speed / RSS / KV bytes after this many cached tokens, each
    context_gen_tokens: int = 16  # tokens decoded per timed round at each context
    kv_cache: str | None = None  # KV-cache type (runtimes/options.py names); None: each runtime's default
    timeout_s: float = 1800.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "contexts", tuple(self.contexts))  # a JSON round trip makes it a list

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RawTiming:
    """What the child measured; BenchResult adds file size, bytes per token and the roofline."""

    runtime: str
    format: str
    quant: str
    kv_cache: str  # what the session holds (its `kv_cache`)
    load_s: float
    prefill_s: list[float]
    ttft_s: list[float]
    decode_s: list[float]
    peak_rss_mb: float
    baseline_rss_mb: float
    kv_bytes_per_element: float | None  # a session's own statement of its element size (overrides the table)


@dataclass
class RawContextTiming:
    """One artifact at one context, measured by its own child process."""

    context: int
    n_ctx: int  # positions the session was sized for
    kv_cache: str
    load_s: float
    fill_s: float  # feeding `context` tokens in chunks of PREFILL_CHUNK
    decode_s: list[float]  # per round of `gen_tokens`
    gen_tokens: int
    kv_bytes: int | None  # Session.kv_cache_bytes() with `context` tokens cached; None: not exposed
    peak_rss_mb: float
    baseline_rss_mb: float
    kv_bytes_per_element: float | None


@dataclass(frozen=True)
class Target:
    """One artifact to measure: its path, optionally a Session class, the KV-cache type to ask for."""

    path: Path
    session: str | None = None  # "module:Class" taking (path, threads=); None: the runtime registry's
    kv_cache: str | None = None  # None: the runtime's default


class _Child:
    """A measuring child process and the pipe it reports on (one JSON object per line)."""

    def __init__(self, target: Target, opts: BenchOptions, context: int | None = None) -> None:
        root = str(Path(__file__).resolve().parents[2])  # the tree holding this qwen2_edge package
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        request = {"path": str(target.path), "opts": opts.to_json(), "session": target.session,
                   "kv_cache": target.kv_cache, "context": context}  # fmt: skip
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
        finals = [c.ask("done") for c in children]
    finally:
        for c in children:
            c.close()
    return [
        RawTiming(
            runtime=r["runtime"],
            format=r["format"],
            quant=r["quant"],
            kv_cache=r["kv_cache"],
            load_s=r["load_s"],
            prefill_s=[x["prefill_s"] for x in rs],
            ttft_s=[x["ttft_s"] for x in rs],
            decode_s=[x["decode_s"] for x in rs],
            peak_rss_mb=f["peak_rss_mb"],
            baseline_rss_mb=r["baseline_rss_mb"],
            kv_bytes_per_element=f["kv_bytes_per_element"],
        )
        for r, rs, f in zip(ready, rounds, finals, strict=True)
    ]


def measure_context(targets: list[Target], context: int, opts: BenchOptions) -> list[RawContextTiming]:
    """Several artifacts at one context: a fresh child each, sized for it; fills one after another, decode
    rounds interleaved. Children are loaded one by one and all closed before the next context starts."""
    children: list[_Child] = []
    try:
        ready = []
        for t in targets:
            children.append(_Child(t, opts, context))
            ready.append(children[-1].read())
        fills = [c.ask("fill") for c in children]
        rounds: list[list[float]] = [[] for _ in children]
        for _ in range(opts.repeat):
            for i, c in enumerate(children):
                rounds[i].append(c.ask("decode")["decode_s"])
        finals = [c.ask("done") for c in children]
    finally:
        for c in children:
            c.close()
    return [
        RawContextTiming(
            context=context,
            n_ctx=r["n_ctx"],
            kv_cache=r["kv_cache"],
            load_s=r["load_s"],
            fill_s=f["fill_s"],
            decode_s=rs,
            gen_tokens=opts.context_gen_tokens,
            kv_bytes=f["kv_bytes"],
            peak_rss_mb=d["peak_rss_mb"],
            baseline_rss_mb=r["baseline_rss_mb"],
            kv_bytes_per_element=d["kv_bytes_per_element"],
        )
        for r, f, rs, d in zip(ready, fills, rounds, finals, strict=True)
    ]


def context_n_ctx(context: int, opts: BenchOptions) -> int:
    """Positions a session measured at `context` must hold: the context, every timed decode round, slack."""
    return context + opts.repeat * opts.context_gen_tokens + CONTEXT_SLACK


def measure_in_subprocess(
    path: str | Path, opts: BenchOptions, session_target: str | None = None
) -> RawTiming:
    """One artifact in a fresh interpreter (a group of one)."""
    return measure_group([Target(Path(path), session_target, opts.kv_cache)], opts)[0]


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
    logits = session.append(prompt, last_only=True)
    t1 = time.perf_counter()
    tok = int(np.argmax(logits[-1]))
    t_first = time.perf_counter()
    for _ in range(gen):
        tok = int(np.argmax(session.append([tok], last_only=True)[-1]))
    t2 = time.perf_counter()
    return t1 - t0, t_first - t0, t2 - t_first


class _ContextRun:
    """A child's state at one context: the cache filled to `context`, then decoded further round by round."""

    def __init__(self, session, context: int) -> None:
        self.session, self.context = session, context
        self.ids = _prompt(session, context)  # held-out text, repeated only when the corpus is shorter
        self.tok: int | None = None

    def fill(self) -> dict[str, Any]:
        import numpy as np

        s = self.session
        s.reset()
        t0 = time.perf_counter()
        logits = None
        for i in range(0, self.context, PREFILL_CHUNK):
            logits = s.append(self.ids[i : i + PREFILL_CHUNK], last_only=True)
        fill_s = time.perf_counter() - t0
        self.tok = int(np.argmax(logits[-1]))
        kv = s.kv_cache_bytes() if hasattr(s, "kv_cache_bytes") else None
        return {"fill_s": fill_s, "kv_bytes": None if kv is None else int(kv)}

    def decode(self, gen: int) -> dict[str, Any]:
        import numpy as np

        tok = self.tok
        t0 = time.perf_counter()
        for _ in range(gen):
            tok = int(np.argmax(self.session.append([tok], last_only=True)[-1]))
        self.tok = tok
        return {"decode_s": time.perf_counter() - t0}


def _open(request: dict[str, Any], opts: BenchOptions, n_ctx: int):
    """The child's session, from the runtime registry or the requested Session class."""
    import importlib
    import inspect

    from ..model.builtin import resolve_model_path
    from ..runtimes.registry import detect_format

    path = resolve_model_path(request["path"])
    target = request.get("session") or detect_format(path).target
    module, cls = target.split(":")
    factory = getattr(importlib.import_module(module), cls)  # runtime libraries count in the baseline
    params = inspect.signature(factory).parameters
    kwargs: dict[str, Any] = {"threads": opts.threads}
    if "n_ctx" in params:  # a runtime that sizes its cache up front gets what this measurement uses
        kwargs["n_ctx"] = n_ctx
    if "kv_cache" in params:
        kwargs["kv_cache"] = request.get("kv_cache")
    elif request.get("kv_cache") is not None:
        raise UserError(f"{target} takes no KV-cache type", path)
    baseline = _rss_mb()
    t0 = time.perf_counter()
    session = factory(path, **kwargs)
    if hasattr(session, "reserve"):
        session.reserve(n_ctx)
    return session, baseline, time.perf_counter() - t0


def child_main(request: dict[str, Any], result_fd: int) -> None:
    report = os.fdopen(result_fd, "w")

    def send(obj: dict[str, Any]) -> None:
        report.write(json.dumps(obj) + "\n")
        report.flush()

    opts = BenchOptions(**request["opts"])
    context = request.get("context")
    warm_gen = min(opts.warmup_tokens, opts.gen_tokens)
    if context is None:
        n_ctx = opts.prompt_tokens + max(opts.gen_tokens, warm_gen) + CONTEXT_SLACK
    else:
        n_ctx = max(context_n_ctx(context, opts), opts.prompt_tokens + warm_gen + CONTEXT_SLACK)
    session, baseline, load_s = _open(request, opts, n_ctx)
    prompt = _prompt(session, opts.prompt_tokens)
    _round(session, prompt, warm_gen)
    run = None if context is None else _ContextRun(session, context)
    send({"runtime": session.runtime, "format": session.format, "quant": getattr(session, "quant", "") or "",
          "kv_cache": getattr(session, "kv_cache", "f32"), "load_s": load_s, "baseline_rss_mb": baseline,
          "n_ctx": n_ctx})  # fmt: skip
    for line in sys.stdin:
        command = line.strip()
        if command == "round":
            p, f, d = _round(session, prompt, opts.gen_tokens)
            send({"prefill_s": p, "ttft_s": f, "decode_s": d})
        elif command == "fill" and run is not None:
            send(run.fill())
        elif command == "decode" and run is not None:
            send(run.decode(opts.context_gen_tokens))
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
