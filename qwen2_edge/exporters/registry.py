"""Export formats and the quant types each can hold: one row per format.

A quant type maps to the QuantScheme our quantizer produces for it (so ONNX int4 and GGUF q4_0 carry the
same codes), or to None when the format stores floats or makes the type itself (GGUF K-quants).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..quant.scheme import QuantScheme


@dataclass
class ExportResult:
    path: Path
    format: str
    quant: str
    bytes: int
    bits_per_weight: float
    seconds: float
    plan: list[dict[str, Any]] = field(default_factory=list)  # per-tensor precision decisions
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "format": self.format,
            "quant": self.quant,
            "bytes": self.bytes,
            "bits_per_weight": round(self.bits_per_weight, 3),
            "seconds": round(self.seconds, 3),
            "notes": self.notes,
            "plan": self.plan,
        }


@dataclass(frozen=True)
class ExportFormat:
    name: str
    quants: dict[str, QuantScheme | None]
    target: str  # "module:function(source, out, quant, qmodel=None, force=False, **options) -> ExportResult"
    fixed_block_size: int | None = None  # GGUF blocks are 32 wide
    asym: dict[str, str] = field(default_factory=dict)  # quant -> its asymmetric sibling
    precheck: str | None = None  # "module:function(ckpt, quant)": refuse early, before quantizing
    # exporter keyword options beyond the common ones, with the flag a user types for each
    options: dict[str, str] = field(default_factory=dict)

    def check_options(self, options: dict[str, Any]) -> None:
        for key, value in options.items():
            if value is not None and key not in self.options:
                flag = "--" + key.replace("_", "-")
                raise UserError(f"the {self.name} format takes no {flag}")

    def check(self, ckpt, quant: str) -> None:
        if self.precheck:
            module, fn = self.precheck.split(":")
            getattr(importlib.import_module(module), fn)(ckpt, quant)

    def exporter(self):
        module, fn = self.target.split(":")
        return getattr(importlib.import_module(module), fn)

    def scheme(self, quant: str, block_size: int | None = None) -> QuantScheme | None:
        if quant not in self.quants:
            raise UserError(
                f"the {self.name} format cannot hold quant type {quant!r} (choose from {', '.join(self.quants)})"
            )
        s = self.quants[quant]
        if s is None or block_size is None or block_size == s.block_size:
            return s
        if self.fixed_block_size is not None:
            raise UserError(
                f"{self.name} {quant} uses blocks of {self.fixed_block_size}; --block-size {block_size} is not possible"
            )
        return QuantScheme(s.bits, block_size, s.symmetric)


FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat(
            "onnx",
            {
                "f32": None,
                "f16": None,
                "int8": QuantScheme(8),
                "int4": QuantScheme(4),
                "int4_asym": QuantScheme(4, symmetric=False),
            },
            "qwen2_edge.exporters.onnx:export_onnx",
            options={"kv_cache": "--kv-cache"},  # the graph's KV-cache type (what onnxruntime-genai runs)
        ),
        ExportFormat(
            "gguf",
            {
                "f32": None,
                "f16": None,
                "q8_0": QuantScheme(8),
                "q4_0": QuantScheme(4),
                "q4_1": QuantScheme(4, symmetric=False),
                "q5_0": None,
                "q5_1": None,
                "q4_k_m": None,
                "q5_k_m": None,
                "q6_k": None,
            },  # fmt: skip
            "qwen2_edge.exporters.gguf:export_gguf",
            fixed_block_size=32,
            precheck="qwen2_edge.exporters.gguf:check_gguf",
        ),
    )
}


def get_format(name: str) -> ExportFormat:
    if name not in FORMATS:
        raise UserError(f"unknown format {name!r} (choose from {', '.join(FORMATS)})")
    return FORMATS[name]


# Pipeline quant names -> the type each format stores it as. int4/int8 map onto GGUF types with the same
# codes, so one QuantizedModel feeds both exporters; K-quants exist only in GGUF.
QUANT_ALIASES: dict[str, dict[str, str]] = {
    "f32": {"onnx": "f32", "gguf": "f32"},
    "f16": {"onnx": "f16", "gguf": "f16"},
    "int8": {"onnx": "int8", "gguf": "q8_0"},
    "int4": {"onnx": "int4", "gguf": "q4_0"},
    "int4_asym": {"onnx": "int4_asym", "gguf": "q4_1"},
    **{q: {"gguf": q} for q in ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k_m", "q5_k_m", "q6_k")},
}


def format_quant(quant: str, fmt: str) -> str | None:
    """The `fmt` quant type for a pipeline quant name, or None if that format has no such type."""
    if quant not in QUANT_ALIASES:
        raise UserError(f"unknown quant {quant!r} (choose from {', '.join(QUANT_ALIASES)})")
    return QUANT_ALIASES[quant].get(fmt)
