"""Calibration tokens for calibration-based quantization (GPTQ): text files or the built-in corpus.

Text is tokenized with the model's own tokenizer and cut into equal-length sequences, so every sequence
shares one attention mask and the layer-by-layer pass can run them one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from ..model.tokenizer import TextTokenizer

DEFAULT_TOKENS = 8192
DEFAULT_SEQ_LEN = 512
MIN_TOKENS_PER_FILE = 16  # below this a file is almost surely the wrong one (empty, binary, truncated)


@dataclass
class Calibration:
    ids: torch.Tensor  # [n_sequences, seq_len] int64
    source: str  # file names or "built-in corpus (training texts)"

    @property
    def tokens(self) -> int:
        return self.ids.numel()

    @property
    def seq_len(self) -> int:
        return self.ids.shape[1]

    def describe(self) -> dict[str, object]:
        return {
            "tokens": self.tokens,
            "sequences": self.ids.shape[0],
            "seq_len": self.seq_len,
            "source": self.source,
        }


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise UserError("calibration file not found", path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError("calibration file is not UTF-8 text", path) from None


def calibration_tokens(
    tokenizer: TextTokenizer,
    files: list[str | Path] | None = None,
    tokens: int = DEFAULT_TOKENS,
    seq_len: int = DEFAULT_SEQ_LEN,
) -> Calibration:
    """`tokens` calibration tokens (rounded to whole sequences) from `files`, or the built-in corpus."""
    if tokens <= 0:
        raise UserError(f"--calib-tokens must be positive, got {tokens}")
    stream: list[int] = []
    if files:
        for f in files:
            p = Path(f)
            ids = tokenizer.encode(_read_text(p))
            if len(ids) < MIN_TOKENS_PER_FILE:
                raise UserError(
                    f"calibration file has only {len(ids)} token(s) (need at least {MIN_TOKENS_PER_FILE})", p
                )
            stream += ids
        source = ", ".join(str(f) for f in files)
    else:
        from ..data.corpus import train_texts

        for text in train_texts():
            stream += tokenizer.encode(text)
            if len(stream) >= tokens:
                break
        source = "built-in corpus (training texts)"
    # Short text is used whole (in shorter sequences) rather than refused: the per-file minimum above
    # already catches the wrong-file cases.
    seq_len = min(seq_len, tokens, len(stream))
    if seq_len == 0:
        raise UserError("the built-in corpus is missing from this Python installation; pass --calib FILE")
    n_seq = min(-(-tokens // seq_len), len(stream) // seq_len)
    ids = torch.tensor(stream[: n_seq * seq_len], dtype=torch.long).reshape(n_seq, seq_len)
    return Calibration(ids, source)
