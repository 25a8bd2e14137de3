"""export_model: checkpoint -> (quantize) -> format exporter. The one library call behind `qwen2-edge export`."""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import UserError
from ..model.checkpoint import Checkpoint, open_checkpoint
from ..quant.model import QuantizedModel
from ..quant.policy import POLICIES, QuantPolicy
from ..quant.scheme import QuantScheme
from .registry import ExportResult, get_format


def export_bytes(ckpt: Checkpoint, fmt: str, quant: str, policy=None, scheme: QuantScheme | None = None) -> int:
    """Upper bound of the disk space exporting `ckpt` takes at its peak (exporters/estimate.py)."""
    from .estimate import estimate_bytes, tokenizer_bytes

    encoding = None
    if fmt == "gguf":
        from .gguf.encoding import choose_encoding

        encoding = choose_encoding(ckpt.spec, str(ckpt.path), weights=lambda n: ckpt.canonical(n).numpy())
    return estimate_bytes(
        ckpt.spec, fmt, quant, policy, scheme.block_size if scheme else None, tokenizer_bytes(ckpt.path), encoding
    )


def parse_overrides(items: list[str]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        pattern, sep, action = item.partition("=")
        if not sep or not pattern or action not in ("float", "int8", "int4", "int4_asym", "int8_asym"):
            raise UserError(f"bad --override {item!r} (expected PATTERN=float|int8|int4|int4_asym)")
        out.append((pattern, action))
    return out


def make_policy(policy: str = "default", overrides: list[str] | None = None) -> QuantPolicy:
    if policy not in POLICIES:
        raise UserError(f"unknown policy {policy!r} (choose from {', '.join(POLICIES)})")
    return POLICIES[policy].with_overrides(parse_overrides(overrides or []))


def quantize_for_export(
    ckpt: Checkpoint,
    scheme: QuantScheme,
    method: str = "rtn",
    policy: QuantPolicy | None = None,
    calib: list[str] | None = None,
    calib_tokens: int = 8192,
    stream: bool = True,
) -> QuantizedModel:
    """Quantize once; the result can feed every exporter (same codes in ONNX and GGUF). With `stream`, RTN
    is deferred: each exporter quantizes a tensor when it writes it and keeps none, so peak memory is the
    largest tensor group, not the model (a second exporter quantizes again: RTN is deterministic)."""
    from ..quant import quantize_model

    if method == "rtn":
        kwargs: dict = {"lazy": stream}
    else:
        kwargs = {"calib": calib or [], "calib_tokens": calib_tokens}
    qmodel = quantize_model(ckpt, scheme, policy or make_policy(), method=method, **kwargs)
    if not qmodel.lazy:
        ckpt.release()  # every weight was read once: drop the mapped pages before the exporter packs
    return qmodel


def export_checkpoint(
    ckpt: Checkpoint,
    fmt: str,
    quant: str,
    out: str | Path,
    qmodel: QuantizedModel | None = None,
    force: bool = False,
    threads: int | None = None,
    **options,
) -> ExportResult:
    """Write one artifact. `qmodel` must be given when the quant type maps to one of our schemes;
    `options` are format-specific exporter options (the registry lists which format takes which)."""
    from ..fsutil import preflight

    t0 = time.perf_counter()
    target = get_format(fmt)
    target.check_options(options)
    options = {k: v for k, v in options.items() if v is not None}
    scheme = target.scheme(quant)
    if scheme is not None and qmodel is None:
        raise ValueError(f"{fmt} {quant} needs a QuantizedModel")
    policy = qmodel.policy if qmodel is not None else None
    preflight(out, force, export_bytes(ckpt, fmt, quant, policy, scheme), folder=fmt == "onnx")
    result = target.exporter()(
        ckpt, Path(out), quant, qmodel=qmodel, force=force, threads=threads, **options
    )
    result.seconds = time.perf_counter() - t0
    return result


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
    **options,
) -> ExportResult:
    """Open, quantize if the quant type needs it, and export: `qwen2-edge export` as a function."""
    from ..fsutil import check_output, preflight

    t0 = time.perf_counter()
    target = get_format(fmt)
    target.check_options(options)
    scheme = target.scheme(quant, block_size)
    pol = make_policy(policy, overrides)
    check_output(out, force, folder=fmt == "onnx")  # fail before any expensive work
    ckpt = open_checkpoint(model, need_tokenizer=True)
    target.check(ckpt, quant)
    # Room for the artifact and its temporaries, before quantization (GPTQ can take minutes).
    preflight(out, force, export_bytes(ckpt, fmt, quant, pol if scheme else None, scheme), folder=fmt == "onnx")
    qmodel = None
    if scheme is not None:
        qmodel = quantize_for_export(ckpt, scheme, method, pol, calib, calib_tokens)
    result = export_checkpoint(
        ckpt, fmt, quant, out, qmodel=qmodel, force=force, threads=threads, **options
    )
    result.seconds = time.perf_counter() - t0
    return result
