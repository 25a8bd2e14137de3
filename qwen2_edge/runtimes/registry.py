"""Which runtime opens which artifact: one row per runtime. Adding a runtime is one row here."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ArtifactError
from ..model.builtin import resolve_model_path
from .base import Session
from .options import RuntimeOptions


@dataclass(frozen=True)
class RuntimeEntry:
    format: str  # artifact format: "hf", "onnx", "gguf"
    runtime: str  # runtime name shown to users
    detect: Callable[[Path], bool]
    target: str  # "module:Class" of the Session, imported only when used

    def session_class(self) -> type[Session]:
        module, cls = self.target.split(":")
        return getattr(importlib.import_module(module), cls)

    def resolve_kv_cache(self, path: Path, requested: str | None) -> str:
        """The KV-cache type this runtime will hold for `requested` (None: its default), without loading
        anything: a command refuses an impossible request in one line before any work."""
        return kv_cache_choice(self.session_class(), path, requested)

    def open(self, path: Path, threads: int | None = None, options: RuntimeOptions | None = None) -> Session:
        o = options or RuntimeOptions(threads=threads)
        threads = threads if threads is not None else o.threads
        return self.session_class()(path, threads=threads, kv_cache=o.kv_cache, n_ctx=o.n_ctx)


def kv_cache_choice(session_class: type[Session], path: str | Path | None, requested: str | None) -> str:
    """Session.choose_kv_cache, before a session is opened; the session applies it again when it opens."""
    return session_class.choose_kv_cache(requested, path)


def _is_hf(p: Path) -> bool:
    return p.is_dir() and (p / "config.json").is_file() and not (p / "model.onnx").exists()


def _is_onnx(p: Path) -> bool:
    return p.is_dir() and (p / "model.onnx").is_file()


def _is_gguf(p: Path) -> bool:
    """A .gguf file, or any file starting with the GGUF magic (the session validates it fully)."""
    if not p.is_file():
        return False
    if p.suffix.lower() == ".gguf":
        return True
    with p.open("rb") as f:
        return f.read(4) == b"GGUF"


RUNTIMES: list[RuntimeEntry] = [
    RuntimeEntry("hf", "transformers", _is_hf, "qwen2_edge.runtimes.reference:ReferenceSession"),
    RuntimeEntry("onnx", "onnxruntime", _is_onnx, "qwen2_edge.runtimes.onnxruntime:OnnxSession"),
    RuntimeEntry("gguf", "llama.cpp", _is_gguf, "qwen2_edge.runtimes.llamacpp:LlamaCppSession"),
]


def detect_format(path: str | Path) -> RuntimeEntry:
    """The runtime entry for an artifact path; a one-line error when nothing recognizes it."""
    p = resolve_model_path(path)
    if not p.exists():
        raise ArtifactError("no such file or directory", p)
    for entry in RUNTIMES:
        if entry.detect(p):
            return entry
    known = ", ".join(sorted({e.format for e in RUNTIMES}))
    raise ArtifactError(f"not a recognized model artifact (known formats: {known})", p)


def open_session(
    path: str | Path, threads: int | None = None, options: RuntimeOptions | None = None
) -> Session:
    """Open an artifact in its runtime; `options` carries the KV-cache type and context length."""
    p = resolve_model_path(path)
    return detect_format(p).open(p, threads=threads, options=options)


def resolve_kv_cache(path: str | Path, requested: str | None) -> str:
    """The KV-cache type the artifact's runtime will hold for `requested` (None: the runtime's default);
    a one-line error for a path no runtime opens or a type its runtime lacks. Loads nothing."""
    p = resolve_model_path(path)
    return detect_format(p).resolve_kv_cache(p, requested)
