"""Does a windowed layer cost its window? Decode speed, prefill speed, KV bytes and RSS at w, 2w, 4w, 8w, 16w.

    python -m benchmarks.window_cost ARTIFACT... [--kv-cache f16,q8_0] [--multiples 1,2,4,8,16]
        [--window W] [--gen 32] [--rounds 5] [--threads 2] [--no-memory] [--json OUT]

Any artifact `qwen2_edge.runtimes.registry.open_session` opens (GGUF in llama.cpp, ONNX folder in
onnxruntime, checkpoint in transformers), at each requested KV-cache precision (default: the runtime's own).
The goal (issue #13): on a model whose every layer slides, decode time per token at 8x the window <= 1.15x
its time at 1x, and the KV bytes of a windowed layer constant beyond the window. Make such a model with
`python -m benchmarks.checkpoints DIR window` and `qwen2-edge export DIR/window --format gguf --quant q8_0`.

Timing: one session per context in one process, all opened with the same n_ctx (the longest context plus
the decoded tokens). Each round refills every session from an empty cache (prefill in chunks of 512
tokens, timed), then decodes `--gen` greedy tokens with the sessions taking turns token by token, so load
from other processes on a shared machine falls on every context alike. Only `append()` is timed; decode
speed is 1 / the median time of a step over all rounds (a step preempted by a neighbour is an outlier, not
a trend), prefill speed the median over rounds.
KV: "buffers" is the session's own `kv_cache_bytes()`, the bytes of the KV buffers the runtime holds (llama.cpp:
allocated at creation, full layers n_ctx cells, sliding layers their ring; onnxruntime: the buffers bound
now); "held" (llama.cpp, `kv_cache_usage()`) is what the sequence holds now in the full-attention and the
sliding layers, measured by llama.cpp's state serializer: a windowed layer's share stops growing at w.
Memory: each context again in a fresh child process (same n_ctx): peak RSS (VmHWM) after filling it.

Before/after: the script also runs in a checkout from before issue 13, e.g.
    git worktree add /tmp/before 15d61a4 && cp benchmarks/window_cost.py /tmp/before/benchmarks/
    (cd /tmp/before && python -m benchmarks.window_cost ARTIFACTS-EXPORTED-THERE...)
benchmarks/window_cost_results.txt holds both, run back to back on the idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# llama.cpp's OpenMP threads spin while waiting (OMP_WAIT_POLICY=ACTIVE, its default). On a shared machine
# that distorts every number and PASSIVE is kinder; on an idle one PASSIVE costs 8x at 2 threads on the
# window checkpoint (217 vs 1748 tok/s, measured 2026-12-02). So it is left to the caller's environment.

PREFILL_CHUNK = 512


def _open(path: str, kv_cache: str | None, n_ctx: int, threads: int):
    from qwen2_edge.runtimes.registry import open_session

    try:
        from qwen2_edge.runtimes.options import RuntimeOptions
    except ImportError:  # a checkout from before issue 13 (the "before" column): no options, no KV types
        import importlib

        from qwen2_edge.runtimes.registry import detect_format

        entry = detect_format(path)
        module, cls = entry.target.split(":")
        factory = getattr(importlib.import_module(module), cls)
        return factory(path, threads=threads, n_ctx=n_ctx) if entry.format == "gguf" else factory(path, threads=threads)
    return open_session(path, threads=threads, options=RuntimeOptions(kv_cache=kv_cache, n_ctx=n_ctx))


def _prompt(session, n: int) -> list[int]:
    from qwen2_edge.data.corpus import heldout_text

    ids = session.encode(heldout_text())
    while len(ids) < n:
        ids = ids + ids
    return ids[:n]


def _append(session, ids: list[int]):
    """The last position's logits (all of them in a checkout from before Session.append's last_only)."""
    try:
        return session.append(ids, last_only=True)
    except TypeError:
        return session.append(ids)


def _fill(session, ids: list[int]) -> tuple[float, int]:
    """Empty the cache, feed `ids` in chunks; (seconds, greedy next token)."""
    session.reset()
    t0 = time.perf_counter()
    for i in range(0, len(ids), PREFILL_CHUNK):
        logits = _append(session, ids[i : i + PREFILL_CHUNK])
    secs = time.perf_counter() - t0
    return secs, int(logits[-1].argmax())


def _kv(session) -> dict[str, Any]:
    kv_bytes = getattr(session, "kv_cache_bytes", None)  # absent before issue 13
    out: dict[str, Any] = {"kv_bytes": kv_bytes() if kv_bytes else None}
    usage = getattr(session, "kv_cache_usage", None)
    if usage is not None:
        out["kv"] = {k: vars(v) for k, v in usage().items()}
    return out


def time_contexts(path: str, kv_cache: str | None, contexts: list[int], n_ctx: int, a) -> dict[str, Any]:
    sessions = {c: _open(path, kv_cache, n_ctx, a.threads) for c in contexts}
    any_s = next(iter(sessions.values()))
    prompt = _prompt(any_s, max(contexts))
    res: dict[int, dict[str, list[float]]] = {c: {"prefill": [], "decode": []} for c in contexts}
    kv: dict[int, dict[str, Any]] = {}
    for s in sessions.values():  # warm-up: page the weights in, build the graphs
        _fill(s, prompt[:16])
        s.append([prompt[0]])
    order = list(contexts)
    for r in range(a.rounds):
        nxt = {}
        for c in order[r % len(order) :] + order[: r % len(order)]:
            secs, nxt[c] = _fill(sessions[c], prompt[:c])
            res[c]["prefill"].append(c / secs)
        for i in range(a.gen):
            for c in order[i % len(order) :] + order[: i % len(order)]:
                t0 = time.perf_counter()
                logits = _append(sessions[c], [nxt[c]])
                res[c]["decode"].append(time.perf_counter() - t0)
                nxt[c] = int(logits[-1].argmax())
    for c, s in sessions.items():
        kv[c] = _kv(s)  # after the last round: c + gen tokens held
    info = {
        "runtime": any_s.runtime,
        "kv_cache": getattr(any_s, "kv_cache", None),
        "n_ubatch": getattr(any_s, "n_ubatch", None),
    }
    for s in sessions.values():
        s.close()
    rows = {
        c: {
            "decode_tok_s": 1 / statistics.median(res[c]["decode"]),
            "prefill_tok_s": statistics.median(res[c]["prefill"]),
            **kv[c],
        }
        for c in contexts
    }
    return {**info, "rows": rows}


def child(request: dict[str, Any]) -> dict[str, Any]:
    """Memory of one context in this fresh process: RSS before opening (runtime libraries imported),
    after opening, after filling."""
    from qwen2_edge.bench.measure import _peak_rss_mb, _rss_mb
    from qwen2_edge.runtimes.registry import detect_format

    __import__(detect_format(request["path"]).target.split(":")[0])  # the runtime's libraries count in the base
    base = _rss_mb()
    s = _open(request["path"], request["kv_cache"], request["n_ctx"], request["threads"])
    opened = _rss_mb()
    _, tok = _fill(s, _prompt(s, request["context"]))
    for _ in range(request["gen"]):
        tok = int(s.append([tok])[-1].argmax())
    out = {
        "rss_base_mb": base,
        "rss_open_mb": opened,
        "rss_filled_mb": _rss_mb(),
        "peak_rss_mb": _peak_rss_mb(),
    }
    out.update(_kv(s))
    s.close()
    return out


def memory_contexts(path: str, kv_cache: str | None, contexts: list[int], n_ctx: int, a) -> dict[int, Any]:
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    out = {}
    for c in contexts:
        req = {"path": path, "kv_cache": kv_cache, "n_ctx": n_ctx, "threads": a.threads, "context": c,
               "gen": a.gen}  # fmt: skip
        p = subprocess.run(
            [sys.executable, "-m", "benchmarks.window_cost", "--child", json.dumps(req)],
            capture_output=True, text=True, env=env, cwd=root, check=False,
        )  # fmt: skip
        if p.returncode != 0:
            raise SystemExit(f"memory child for {path} at {c} failed:\n{p.stderr[-2000:]}")
        out[c] = json.loads(p.stdout.strip().splitlines()[-1])
    return out


def _window(path: str, given: int | None) -> int:
    if given:
        return given
    from qwen2_edge.bench.bytes_per_token import inventory
    from qwen2_edge.runtimes.registry import detect_format

    w = inventory(path, detect_format(path).format).geometry.max_window
    if not w:
        raise SystemExit(f"{path}: no sliding window in this model; pass --window to sweep anyway")
    return w


def _mib(b: int | None) -> str:
    return "-" if b is None else f"{b / 2**20:.2f}"


def report(path: str, w: int, n_ctx: int, t: dict[str, Any], mem: dict[int, Any]) -> str:
    rows = t["rows"]
    first = next(iter(rows))
    lines = [
        f"\n{path}: {t['runtime']}, KV cache {t['kv_cache']}, window {w}, n_ctx {n_ctx}"
        + (f", n_ubatch {t['n_ubatch']}" if t["n_ubatch"] else ""),
        f"{'context':>8} {'x w':>4} {'decode tok/s':>12} {'ms/token':>9} {'vs 1x':>6} {'prefill tok/s':>13} "
        f"{'buffers MiB':>11} {'held: full':>10} {'sliding':>8} {'per sliding layer':>17} {'peak RSS MiB':>12}",
    ]
    for c, r in rows.items():
        kv = r.get("kv") or {}
        full, sl = kv.get("full"), kv.get("sliding")
        per = sl["held_bytes"] / sl["layers"] if sl and sl["layers"] else None
        lines.append(
            f"{c:>8} {c / w:>4.0f} {r['decode_tok_s']:>12.1f} {1e3 / r['decode_tok_s']:>9.3f} "
            f"{rows[first]['decode_tok_s'] / r['decode_tok_s']:>6.2f} {r['prefill_tok_s']:>13.1f} "
            f"{_mib(r['kv_bytes']):>11} {_mib(full and full['held_bytes']):>10} "
            f"{_mib(sl and sl['held_bytes']):>8} {_mib(per):>17} "
            f"{mem[c]['peak_rss_mb'] if c in mem else float('nan'):>12.1f}"
        )
    alloc = {k: (v["cells"], v["allocated_bytes"]) for k, v in (rows[first].get("kv") or {}).items()}
    if alloc:
        lines.append(
            "allocated at creation (llama.cpp's report, cells per layer / MiB): "
            + ", ".join(f"{k} {c} / {_mib(b)}" for k, (c, b) in alloc.items())
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifacts", nargs="*")
    ap.add_argument(
        "--kv-cache", default=None, help="comma-separated KV-cache types (default: the runtime's)"
    )
    ap.add_argument("--multiples", default="1,2,4,8,16", help="contexts as multiples of the window")
    ap.add_argument("--window", type=int, default=None, help="default: the artifact's largest window")
    ap.add_argument("--gen", type=int, default=32, help="tokens decoded per context per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-memory", action="store_true", help="skip the per-context RSS children")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(json.loads(a.child))))
        return 0
    if not a.artifacts:
        ap.error("give at least one artifact")
    kv_types = a.kv_cache.split(",") if a.kv_cache else [None]
    print(f"window_cost: {a.threads} threads, {a.gen} decoded tokens x {a.rounds} rounds (median step), "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, {time.strftime('%Y-%m-%d %H:%M:%S')}")  # fmt: skip
    results = []
    for path in a.artifacts:
        w = _window(path, a.window)
        contexts = [int(m) * w for m in a.multiples.split(",")]
        n_ctx = max(contexts) + a.gen + 16
        for kv in kv_types:
            t = time_contexts(path, kv, contexts, n_ctx, a)
            mem = {} if a.no_memory else memory_contexts(path, kv, contexts, n_ctx, a)
            print(report(path, w, n_ctx, t, mem), flush=True)
            results.append({"path": path, "window": w, "n_ctx": n_ctx, **t,
                            "memory": {str(c): m for c, m in mem.items()}})  # fmt: skip
    if a.json:
        a.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
