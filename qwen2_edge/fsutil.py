"""Atomic output: write to a temporary sibling, rename when complete, never clobber without force."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import UserError


def check_output(path: str | Path, force: bool) -> Path:
    """Refuse to overwrite an existing output unless force; return the path."""
    p = Path(path)
    if p.exists() and not force:
        raise UserError("already exists (pass --force to overwrite)", p)
    if not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    return p


def check_free_space(folder: str | Path, need_bytes: int) -> None:
    """Fail before writing when the planned outputs cannot fit (with 5% slack)."""
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need_bytes * 1.05 > free:
        raise UserError(
            f"needs about {need_bytes / 2**20:.0f} MiB but only {free / 2**20:.0f} MiB are free", folder
        )


@contextlib.contextmanager
def atomic_file(path: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block completes."""
    dest = check_output(path, force)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; it replaces `path` only if the block completes."""
    dest = check_output(path, force)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        yield tmp
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
