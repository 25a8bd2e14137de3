"""Hugging Face hub model ids (`org/name[@revision]`) resolved to a local snapshot folder.

Only what a checkpoint needs is fetched: JSON (config, index, tokenizer), safetensors weights and text
tokenizer files (merges.txt); pickle weights (*.bin, *.pt, *.pth, *.pkl, *.ckpt) are never downloaded,
whatever the repository holds. HF_HOME / HF_HUB_CACHE and HF_HUB_OFFLINE are read when a model is
resolved (not when huggingface_hub is imported), so a caller that sets them at run time is obeyed; offline,
a cached snapshot is used without opening any connection (tests/test_hub.py checks that with sockets
disabled).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import CheckpointError

ALLOW_PATTERNS = ("*.json", "*.safetensors", "*.txt", "tokenizer.model")
IGNORE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt", "*.h5", "*.msgpack", "*.onnx*")

# org/name with the hub's own character set; an optional @revision (branch, tag or commit).
_HUB_ID = re.compile(
    r"^(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})(?:@(?P<rev>[\w./-]{1,200}))?$"
)
_TRUE = {"1", "ON", "YES", "TRUE"}


def parse_hub_id(text: str) -> tuple[str, str | None] | None:
    """(repo_id, revision or None) when `text` has the shape of a hub id, else None."""
    m = _HUB_ID.match(text)
    if m is None or text.endswith((".gguf", ".json", ".safetensors")):
        return None
    return m.group("repo"), m.group("rev")


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE


def hub_cache_dir() -> Path:
    """huggingface_hub's cache folder as the environment says now: HF_HUB_CACHE, else $HF_HOME/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def resolve_hub_id(text: str) -> Path:
    """The local snapshot folder of hub id `text` (downloaded unless offline); a one-line CheckpointError
    when the id is unknown, the revision missing, or (offline) nothing is cached."""
    parsed = parse_hub_id(text)
    if parsed is None:
        raise CheckpointError("not a Hugging Face model id (expected org/name[@revision])", text)
    repo, rev = parsed
    offline = is_offline()
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - transformers depends on it
        raise CheckpointError("huggingface_hub is not installed; pass a local folder", text) from None
    try:
        folder = snapshot_download(
            repo,
            revision=rev,
            cache_dir=str(hub_cache_dir()),
            allow_patterns=list(ALLOW_PATTERNS),
            ignore_patterns=list(IGNORE_PATTERNS),
            local_files_only=offline,
        )
    except LocalEntryNotFoundError:
        where = "with HF_HUB_OFFLINE=1" if offline else "and the hub could not be reached"
        raise CheckpointError(
            f"not a local path, and no cached snapshot of hub model {repo!r}"
            + (f" at revision {rev!r}" if rev else "")
            + f" in {hub_cache_dir()} ({where})",
            text,
        ) from None
    except HfHubHTTPError as e:
        msg = " ".join(str(e).split())[:200]
        raise CheckpointError(f"hub model {repo!r} could not be fetched: {msg}", text) from None
    except (OSError, ValueError) as e:
        msg = " ".join(str(e).split())[:200]
        raise CheckpointError(f"hub model {repo!r} could not be resolved: {msg}", text) from None
    return Path(folder)
