"""Models shipped inside the package, addressed as `builtin:NAME`."""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUILTINS = {"teacher": ASSETS / "teacher"}
PREFIX = "builtin:"


def resolve_model_path(path: str | Path) -> Path:
    """`builtin:teacher` -> the shipped folder; an existing path -> itself; `org/name[@revision]` that is
    not a local path -> its Hugging Face hub snapshot (model/hub.py); anything else -> Path."""
    s = str(path)
    if s.startswith(PREFIX):
        name = s[len(PREFIX) :]
        if name not in BUILTINS:
            raise CheckpointError(f"unknown built-in model (available: {', '.join(BUILTINS)})", s)
        folder = BUILTINS[name]
        if not (folder / "config.json").is_file():
            raise CheckpointError("built-in model files are missing from this installation", folder)
        return folder
    p = Path(path)
    if isinstance(path, str) and not p.exists():
        from .hub import parse_hub_id, resolve_hub_id

        if parse_hub_id(s) is not None:
            return resolve_hub_id(s)
    return p
