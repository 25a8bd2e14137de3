"""Locate and run the peer tools the benchmarks compare against, each in its own measured process.

- llama.cpp's converter `convert_hf_to_gguf.py` (with its `conversion/` package and `gguf-py/`), taken from
  the llama-cpp-python source distribution of the installed version: `pip download --no-binary` into a
  temporary folder, and only those three parts extracted into a cache outside the repository (never
  vendored). A freshly trained tokenizer has no known pre-tokenizer hash, so the converter runs in a
  wrapper process that tells it the pre-tokenizer is "qwen2" (its file is not edited).
- llama.cpp's quantizer, `llama_model_quantize` from llama-cpp-python.
- onnxruntime-genai's model builder, `python -m onnxruntime_genai.models.builder`.

Every tool runs as a child process; `run_measured` reports its wall time and its peak resident memory
(`wait4`'s rusage of that child, which includes the descendants it waited for).

    python -m benchmarks.peers convert CKPT OUT.gguf [f16|f32|q8_0]
    python -m benchmarks.peers quantize IN.gguf OUT.gguf q4_0
    python -m benchmarks.peers builder CKPT OUT_DIR [int4|fp16|fp32]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

PYTHON = sys.executable
CACHE = Path(os.environ.get("QWEN2_EDGE_PEERS_CACHE", Path.home() / ".cache" / "qwen2-edge" / "peers"))
# Parts of the llama.cpp tree the converter needs (the rest of the 76 MB sdist is C++).
_CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


@dataclass
class RunStats:
    """One measured child process."""

    label: str
    wall_s: float
    peak_rss_mb: float
    returncode: int
    output_tail: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def to_json(self) -> dict:
        d = asdict(self)
        d["wall_s"] = round(self.wall_s, 3)
        d["peak_rss_mb"] = round(self.peak_rss_mb, 1)
        return d


# Forks and waits for the measured command from a small, freshly exec'd process. Linux carries the
# exec'ing process's memory high-water mark into the child's ru_maxrss (via fork + exec), so a command
# started directly from a large parent (a benchmark that holds checkpoints or a bandwidth buffer) would
# report at least the parent's peak. This launcher's own footprint is the floor instead (~10 MB).
_LAUNCHER = """
import json, os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({"maxrss_kib": usage.ru_maxrss, "code": os.waitstatus_to_exitcode(status)}, f)
"""


def run_measured(
    cmd: list[str],
    label: str = "",
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout_s: float = 3600.0,
) -> RunStats:
    """Run `cmd`, return its wall time and peak RSS (wait4's ru_maxrss of that process alone)."""
    with tempfile.TemporaryDirectory(prefix="qwen2-edge-run-") as tmp:
        report = Path(tmp) / "rusage.json"
        log_path = Path(tmp) / "log"
        with log_path.open("w+b") as log:
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                [PYTHON, "-c", _LAUNCHER, str(report), *cmd],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,  # a timeout kills the whole group, launcher and command
            )
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
            wall = time.perf_counter() - t0
        tail = log_path.read_bytes()[-4000:].decode("utf-8", "replace")
        if report.is_file():
            r = json.loads(report.read_text())
            rss_mb, code = r["maxrss_kib"] / 1024, r["code"]  # Linux reports ru_maxrss in KiB
        else:
            rss_mb, code = 0.0, proc.returncode or -9
    return RunStats(label or Path(cmd[0]).name, wall, rss_mb, code, tail)


# -- llama.cpp converter ------------------------------------------------------------------------------
def llama_cpp_version() -> str:
    from importlib.metadata import version

    return version("llama-cpp-python")


def llama_cpp_tree(version: str | None = None) -> Path:
    """The folder holding convert_hf_to_gguf.py, conversion/ and gguf-py/ of llama-cpp-python `version`."""
    version = version or llama_cpp_version()
    dest = CACHE / f"llama-cpp-python-{version}"
    if (dest / "convert_hf_to_gguf.py").is_file():
        return dest
    with tempfile.TemporaryDirectory(prefix="qwen2-edge-sdist-") as tmp:
        subprocess.run(
            [PYTHON, "-m", "pip", "download", f"llama-cpp-python=={version}",
             "--no-binary", ":all:", "--no-deps", "--quiet", "-d", tmp],
            check=True,
        )  # fmt: skip
        sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        staging = Path(tempfile.mkdtemp(prefix=".llama-cpp-", dir=_mkdir(CACHE)))
        with tarfile.open(sdist) as tar:
            root = f"llama_cpp_python-{version}/vendor/llama.cpp/"
            members = [
                m for m in tar.getmembers()
                if m.name.startswith(root) and m.name[len(root):].startswith(_CONVERTER_PARTS)
            ]  # fmt: skip
            for m in members:
                m.name = m.name[len(root) :]
            tar.extractall(staging, members=members, filter="data")
        os.replace(staging, dest)  # atomic: a half-extracted tree is never picked up
    return dest


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


# Runs the converter unmodified, after telling its TextModel that the pre-tokenizer is Qwen2's: our
# tokenizers are trained locally, so their pre-tokenizer hash is in no table (the converter refuses).
_CONVERTER_WRAPPER = """
import runpy, sys
tree = sys.argv[1]
sys.path[:0] = [tree + "/gguf-py", tree]
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
sys.argv = [tree + "/convert_hf_to_gguf.py"] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def converter_command(ckpt: str | Path, out: str | Path, outtype: str = "f16") -> list[str]:
    tree = llama_cpp_tree()
    return [
        PYTHON,
        "-c",
        _CONVERTER_WRAPPER,
        str(tree),
        str(ckpt),
        "--outfile",
        str(out),
        "--outtype",
        outtype,
    ]


def run_converter(ckpt: str | Path, out: str | Path, outtype: str = "f16") -> RunStats:
    """llama.cpp's convert_hf_to_gguf.py on `ckpt`, measured."""
    cmd = converter_command(ckpt, out, outtype)  # may download the sdist: not part of the timing
    return run_measured(cmd, f"llama.cpp convert_hf_to_gguf {outtype}")


# -- llama.cpp quantizer ------------------------------------------------------------------------------
_QUANTIZE_SNIPPET = """
import ctypes, sys, llama_cpp
src, dst, ftype, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + ftype.upper())
params.nthread = threads
rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
sys.exit(1 if rc else 0)
"""


def quantize_command(src: str | Path, dst: str | Path, ftype: str = "q4_0", threads: int = 2) -> list[str]:
    return [PYTHON, "-c", _QUANTIZE_SNIPPET, str(src), str(dst), ftype, str(threads)]


def run_quantize(src: str | Path, dst: str | Path, ftype: str = "q4_0", threads: int = 2) -> RunStats:
    """llama.cpp's own quantizer (`llama_model_quantize`) from `src` GGUF to `dst`, measured."""
    return run_measured(quantize_command(src, dst, ftype, threads), f"llama.cpp quantize {ftype}")


# -- onnxruntime-genai model builder ------------------------------------------------------------------
def builder_command(ckpt: str | Path, out: str | Path, precision: str = "int4") -> list[str]:
    cache = Path(out).with_name(Path(out).name + ".cache")
    return [PYTHON, "-m", "onnxruntime_genai.models.builder",
            "-i", str(ckpt), "-o", str(out), "-p", precision, "-e", "cpu", "-c", str(cache)]  # fmt: skip


def run_builder(ckpt: str | Path, out: str | Path, precision: str = "int4") -> RunStats:
    """onnxruntime-genai's model builder on `ckpt` (CPU, `precision`), measured."""
    return run_measured(builder_command(ckpt, out, precision), f"onnxruntime-genai builder {precision}")


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] not in ("convert", "quantize", "builder"):
        print(__doc__, file=sys.stderr)
        return 2
    tool, a, b, *rest = argv
    kind = rest[0] if rest else None
    if tool == "convert":
        stats = run_converter(a, b, kind or "f16")
    elif tool == "quantize":
        stats = run_quantize(a, b, kind or "q4_0")
    else:
        stats = run_builder(a, b, kind or "int4")
    print(f"{stats.label}: {stats.wall_s:.1f} s, peak RSS {stats.peak_rss_mb:.0f} MB, rc {stats.returncode}")
    if not stats.ok:
        print(stats.output_tail, file=sys.stderr)
    return 0 if stats.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
