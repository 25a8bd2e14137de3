"""Errors a user can act on. The CLI prints them as one line and exits 2; library callers catch them."""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """Bad input: a file, a flag or a combination we cannot honour. Message names the file and the problem."""

    exit_code = 2

    def __init__(self, problem: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class CheckpointError(UserError):
    """A model directory or file that is not a usable checkpoint."""


class UnsupportedError(UserError):
    """A valid model that uses a feature a target format or runtime cannot represent exactly."""


class ArtifactError(UserError):
    """An exported artifact (ONNX folder, GGUF file) that is missing, truncated or not what it claims."""


def read_json_object(path: Path, what: str, error: type[UserError] = UserError) -> dict:
    """A JSON object from `path`, or a one-line `error` naming the file (bad UTF-8, bad JSON, not an object)."""
    import json

    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{what} is not valid JSON ({e})", path) from None
    if not isinstance(raw, dict):
        raise error(f"{what} must be a JSON object", path)
    return raw


class FileSystemError(UserError):
    """The operating system refused a read or write (full or read-only disk, permissions, I/O error)."""
