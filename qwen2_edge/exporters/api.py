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

# Approximate stored bits per weight of 2-D matrices, for the free-disk check before writing.
_BITS = {"f32": 32, "f16": 16, "int8": 8.5, "q8_0": 8.5, "q6_k": 6.6, "q5_k_m": 5.7, "q5_0": 5.5, "q5_1": 6.0}
_TEMP_F16 = ("q4_k_m", "q5_k_m", "q6_k")  # made by llama.cpp from an f16 file written first


def estimate_bytes(spec, quant: str) -> int:
    from ..model.params import count_params

    c = count_params(spec)
    bits = _BITS.get(quant, 5.0)  # int4 / q4_0 / q4_1 / q4_k_m are ~4.5-5 bits
    need = c.matrix * bits / 8 + c.vector * 4
    if quant in _TEMP_F16:
        need += c.matrix * 2
    return int(need)


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
    from ..fsutil import check_free_space, check_output

    t0 = time.perf_counter()
    target = get_format(fmt)
    target.check_options(options)
    options = {k: v for k, v in options.items() if v is not None}
    scheme = target.scheme(quant)
    if scheme is not None and qmodel is None:
        raise ValueError(f"{fmt} {quant} needs a QuantizedModel")
    check_output(out, force)
    check_free_space(Path(out).parent, estimate_bytes(ckpt.spec, quant))
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
    from ..fsutil import check_output

    t0 = time.perf_counter()
    target = get_format(fmt)
    target.check_options(options)
    scheme = target.scheme(quant, block_size)
    pol = make_policy(policy, overrides)
    check_output(out, force)  # fail before any expensive work
    ckpt = open_checkpoint(model, need_tokenizer=True)
    target.check(ckpt, quant)
    qmodel = None
    if scheme is not None:
        qmodel = quantize_for_export(ckpt, scheme, method, pol, calib, calib_tokens)
    result = export_checkpoint(
        ckpt, fmt, quant, out, qmodel=qmodel, force=force, threads=threads, **options
    )
    result.seconds = time.perf_counter() - t0
    return result
