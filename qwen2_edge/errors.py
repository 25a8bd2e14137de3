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
