"""How a runtime is asked to run an artifact: threads, KV-cache precision, context length.

One frozen object travels from the CLI (`--threads`, `--kv-cache`, `--ctx`) through `open_session` to the
Session, so a new setting is one field here, not a keyword threaded through every caller.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError

# Every KV-cache precision a user can ask for, in the names llama.cpp uses. Which runtime honours which is
# each Session's own table (`Session.kv_cache_types`); asking a runtime for one it lacks is a one-line error.
KV_CACHE_TYPES = ("f32", "f16", "q8_0", "q4_0")


@dataclass(frozen=True)
class RuntimeOptions:
    threads: int | None = None
    # None: the runtime's own default (llama.cpp: f16; onnxruntime and transformers: f32).
    kv_cache: str | None = None
    # Tokens the session must hold (prompt + generation). None: the model's limit
    # (max_position_embeddings / the GGUF context_length). Runtimes that allocate up front size to this.
    n_ctx: int | None = None

    def __post_init__(self) -> None:
        if self.kv_cache is not None and self.kv_cache not in KV_CACHE_TYPES:
            raise UserError(
                f"unknown KV-cache type {self.kv_cache!r} (choose from {', '.join(KV_CACHE_TYPES)})"
            )
        if self.n_ctx is not None and self.n_ctx <= 0:
            raise UserError(f"context length must be positive, got {self.n_ctx}")


def parse_kv_cache(text: str) -> str:
    """argparse type for --kv-cache."""
    import argparse

    if text not in KV_CACHE_TYPES:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(KV_CACHE_TYPES)}, got {text!r}")
    return text
