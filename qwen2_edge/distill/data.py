"""Text -> token ids -> fixed-length training sequences, with a held-out split.

Documents are joined with the end-of-text id between them and cut into non-overlapping windows of
`seq_len` tokens; the ragged tail is dropped. The held-out split is the last `heldout_fraction` of each
file's tokens, so held-out text is never seen in training and every file contributes to both sides.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError

Encoder = Callable[[list[str]], list[list[int]]]


@dataclass(frozen=True)
class PackedData:
    train: torch.Tensor  # [N, seq_len] int64
    heldout: torch.Tensor  # [M, seq_len] int64
    seq_len: int

    @property
    def train_tokens(self) -> int:
        return self.train.numel()

    @property
    def heldout_tokens(self) -> int:
        return self.heldout.numel()


def pack(docs: Sequence[Sequence[int]], seq_len: int, sep_id: int | None) -> torch.Tensor:
    """Concatenate documents (each followed by `sep_id`) and cut into [N, seq_len] windows."""
    stream: list[int] = []
    for d in docs:
        stream.extend(d)
        if sep_id is not None:
            stream.append(sep_id)
    n = len(stream) // seq_len
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)


def pack_texts(
    train_texts: Sequence[str],
    heldout_texts: Sequence[str],
    encode: Encoder,
    seq_len: int,
    sep_id: int | None,
) -> PackedData:
    """Separate train and held-out documents (e.g. the built-in corpus' disjoint module lists)."""
    return PackedData(
        train=pack(encode(list(train_texts)), seq_len, sep_id),
        heldout=pack(encode(list(heldout_texts)), seq_len, sep_id),
        seq_len=seq_len,
    )


def pack_files(
    files: Sequence[str | Path],
    encode: Encoder,
    seq_len: int,
    sep_id: int | None,
    heldout_fraction: float = 0.05,
) -> PackedData:
    """Read UTF-8 text files; hold out the last `heldout_fraction` of every file's tokens."""
    if not 0 < heldout_fraction < 1:
        raise UserError(f"heldout fraction must be in (0, 1), got {heldout_fraction}")
    texts = []
    for f in files:
        p = Path(f)
        if not p.is_file():
            raise UserError("no such data file", p)
        try:
            texts.append(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise UserError("not UTF-8 text", p) from None
    train_docs: list[list[int]] = []
    held_docs: list[list[int]] = []
    for ids in encode(texts):
        cut = int(len(ids) * (1 - heldout_fraction))
        train_docs.append(ids[:cut])
        held_docs.append(ids[cut:])
    data = PackedData(
        train=pack(train_docs, seq_len, sep_id), heldout=pack(held_docs, seq_len, sep_id), seq_len=seq_len
    )
    if len(data.train) == 0 or len(data.heldout) == 0:
        raise UserError(
            f"too little text: {len(data.train)} training and {len(data.heldout)} held-out sequences of "
            f"{seq_len} tokens (add data or lower --seq-len)",
            Path(files[0]) if files else None,
        )
    return data


def batch_indices(n: int, batch: int, position: int, seed: int) -> torch.Tensor:
    """Sequence indices for the `batch` samples starting at stream `position`.

    The stream is an endless series of epochs, each a permutation of range(n) seeded by (seed, epoch):
    any batch is a pure function of its position, so resuming (or another rank) needs no RNG state.
    """
    out = []
    while len(out) < batch:
        epoch, offset = divmod(position, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        take = min(batch - len(out), n - offset)
        out.extend(perm[offset : offset + take].tolist())
        position += take
    return torch.tensor(out, dtype=torch.long)
