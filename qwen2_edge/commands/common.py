"""Flags several commands share (--kv-cache, --ctx), read as text and checked in `run`, so a bad value is
the CLI's one-line error (exit 2) rather than argparse's usage block."""

from __future__ import annotations

import argparse

# runtimes/options.py KV_CACHE_TYPES, spelled out so building the parser imports no runtime (the CLI test
# checks they agree).
KV_CACHE_METAVAR = "{f32,f16,q8_0,q4_0}"


def add_kv_cache(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--kv-cache", metavar=KV_CACHE_METAVAR, default=None, help=help)


def kv_cache_arg(args: argparse.Namespace) -> str | None:
    """--kv-cache as given (None when absent), or a one-line error for a type no runtime knows."""
    from ..errors import UserError
    from ..runtimes.options import RuntimeOptions

    try:
        return RuntimeOptions(kv_cache=args.kv_cache).kv_cache
    except UserError as e:
        raise UserError(f"--kv-cache: {e.problem}") from None


def positive_int_arg(flag: str, text: str | None) -> int | None:
    """An optional positive integer flag read as text; a one-line error otherwise."""
    from ..errors import UserError

    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise UserError(f"{flag}: expected a positive integer, got {text!r}")
    return value


def add_no_verify(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="skip checking artifacts against the SHA-256 recorded at export (0.4-0.9 s for a 0.5B-shaped "
        "int4 artifact, ~350 MiB, on 2 busy cores)",
    )


def verify_artifacts(args: argparse.Namespace, paths: list[str]) -> None:
    """Before loading: a corrupted artifact is a one-line error (exit 2), one without a record a notice."""
    import sys

    from ..integrity import verify_before_load

    verify_before_load(paths, skip=args.no_verify, notice=lambda m: print(m, file=sys.stderr))
