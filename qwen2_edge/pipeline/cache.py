"""Stage cache: a stage is skipped when its input fingerprint matches the last completed run's.

Records are written only after a stage completes (atomically), so an interrupted run resumes from the last
completed stage and never trusts a half-written output.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..fsutil import atomic_file


def fingerprint(*parts: Any) -> str:
    """Stable hash of JSON-able values and paths (files by size + mtime + name, folders recursively)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            h.update(_path_fingerprint(part).encode())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def _path_fingerprint(p: Path) -> str:
    if not p.exists():
        return f"missing:{p}"
    if p.is_file():
        st = p.stat()
        return f"{p.name}:{st.st_size}:{st.st_mtime_ns}"
    entries = []
    for f in sorted(p.rglob("*")):
        if f.is_file() and not f.name.startswith("."):
            st = f.stat()
            entries.append(f"{f.relative_to(p)}:{st.st_size}:{st.st_mtime_ns}")
    return "\n".join(entries)


class StageCache:
    def __init__(self, root: Path) -> None:
        self.path = root / ".qwen2-edge" / "stages.json"
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            try:
                self.records = json.loads(self.path.read_text())
            except json.JSONDecodeError:
                self.records = {}  # a damaged cache only costs a recomputation

    def lookup(self, stage: str, key: str, outputs: list[Path]) -> dict[str, Any] | None:
        rec = self.records.get(stage)
        if rec and rec.get("key") == key and all(Path(o).exists() for o in outputs):
            return rec.get("result", {})
        return None

    def store(self, stage: str, key: str, result: dict[str, Any]) -> None:
        self.records[stage] = {"key": key, "result": result}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(self.path, force=True) as tmp:
            tmp.write_text(json.dumps(self.records, indent=1, default=str))
