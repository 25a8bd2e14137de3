"""export_model: checkpoint -> (quantize) -> format exporter. The one library call behind `qwen2-edge export`."""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import UserError
from ..model.checkpoint import open_checkpoint
from ..quant.policy import POLICIES
from .registry import ExportResult, get_format


def parse_overrides(items: list[str]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        pattern, sep, action = item.partition("=")
        if not sep or not pattern or action not in ("float", "int8", "int4", "int4_asym", "int8_asym"):
            raise UserError(f"bad --override {item!r} (expected PATTERN=float|int8|int4|int4_asym)")
        out.append((pattern, action))
    return out


def export_model(
    model: str | Path,
    fmt: str,
    quant: str,
    out: str | Path,
    method: str = "rtn",
    block_size: int | None = None,
    policy: str = "default",
    overrides: list[str] | None = None,
    calib: list[str] | None = None,
    calib_tokens: int = 8192,
    threads: int | None = None,
    force: bool = False,
) -> ExportResult:
    from ..fsutil import check_output

    t0 = time.perf_counter()
    target = get_format(fmt)
    scheme = target.scheme(quant, block_size)
    check_output(out, force)  # fail before any expensive work
    ckpt = open_checkpoint(model, need_tokenizer=True)
    qmodel = None
    if scheme is not None:
        from ..quant import quantize_model

        if policy not in POLICIES:
            raise UserError(f"unknown policy {policy!r} (choose from {', '.join(POLICIES)})")
        pol = POLICIES[policy].with_overrides(parse_overrides(overrides or []))
        kwargs = {"calib": calib or [], "calib_tokens": calib_tokens} if method != "rtn" else {}
        qmodel = quantize_model(ckpt, scheme, pol, method=method, **kwargs)
    result = target.exporter()(ckpt, Path(out), quant, qmodel=qmodel, force=force, threads=threads)
    result.seconds = time.perf_counter() - t0
    return result
