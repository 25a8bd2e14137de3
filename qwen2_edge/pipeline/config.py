"""PipelineConfig: everything one pipeline run needs, as plain typed data."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class PipelineConfig:
    out: Path
    model: str | None = None  # start from an existing float student (skips distillation)
    teacher: str | None = None
    student: str | None = None  # student spec JSON, or None for the default demo student
    data: list[str] = field(default_factory=list)  # text files; empty = the built-in corpus
    distill_steps: int | None = None  # None: the distiller's default
    formats: tuple[str, ...] = ("onnx", "gguf")
    quants: tuple[str, ...] = ("int8", "int4")
    method: str = "rtn"
    policy: str = "default"
    check_ctx: int | None = None
    check_chunks: int = 4
    bench: bool = True
    bench_prompt_tokens: int = 64
    bench_gen_tokens: int = 32
    threads: int | None = None
    # The KV cache the artifacts are deployed with (bench, and check's deployed rows; check's gates read
    # its f32-cache rows); None: each runtime's default.
    kv_cache: str | None = None
    force: bool = False

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        return d
