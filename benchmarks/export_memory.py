"""Where an export's peak memory goes: anonymous vs file-backed RSS, and the code running at each new peak.

    python -m benchmarks.export_memory CKPT --format gguf --quant q4_0 [--out PATH]

A sampler thread reads /proc/self/status every 50 ms; whenever resident memory reaches a new high it
records RssAnon (heap: numpy/torch buffers), RssFile (pages of memory-mapped files, i.e. the safetensors
checkpoint being read) and the innermost frames of the main thread. Prints the peaks in order, so an
exporter's owner sees which step holds the memory. Diagnostics only: no thresholds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(rest.split()[0]) // 1024  # MiB
    return out


def profile(fn, *args, interval: float = 0.05, **kwargs):
    """Run fn(*args, **kwargs) while sampling memory; return (result, peaks)."""
    main = threading.main_thread().ident
    peaks: list[dict] = []
    done = threading.Event()
    t0 = time.perf_counter()

    def sample() -> None:
        best = 0
        while not done.is_set():
            s = _status()
            if s.get("VmRSS", 0) > best + 64:  # a new high by at least 64 MiB
                best = s["VmRSS"]
                frame = sys._current_frames().get(main)
                stack = traceback.extract_stack(frame)[-4:] if frame else []
                where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(stack))
                peaks.append({"t": time.perf_counter() - t0, **s, "where": where})
            time.sleep(interval)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        result = fn(*args, **kwargs)
    finally:
        done.set()
        th.join()
    return result, peaks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt")
    ap.add_argument("--format", required=True)
    ap.add_argument("--quant", required=True)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from qwen2_edge.exporters.api import export_model

    with tempfile.TemporaryDirectory(prefix="qwen2-edge-memprof-") as tmp:
        out = args.out or str(Path(tmp) / ("model.gguf" if args.format == "gguf" else "model"))
        print(f"before: {_status()}")
        _, peaks = profile(export_model, args.ckpt, args.format, args.quant, out, force=True)
    for p in peaks:
        print(
            f"{p['t']:6.1f} s  RSS {p['VmRSS']:5d} MiB (anon {p['RssAnon']:5d}, file {p['RssFile']:5d})  {p['where']}"
        )
    print(f"peak (VmHWM): {_status()['VmHWM']} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
