"""Block quantization schemes: bits, block size along the input dimension, symmetric or with zero point."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError

BLOCK_SIZES = (32, 64, 128)


@dataclass(frozen=True)
class QuantScheme:
    """value = (code - zero) * scale per block of `block_size` input elements.

    Symmetric: zero = 2**(bits-1) fixed (int4 == GGUF Q4_0, int8 == GGUF Q8_0 at block 32).
    Asymmetric: zero is a per-block integer code (int4 at block 32 == GGUF Q4_1, see tensor.py).
    Scales are stored as float16, exactly as both GGUF and MatMulNBits carry them.
    """

    bits: int
    block_size: int = 32
    symmetric: bool = True

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise UserError(f"unsupported bit width {self.bits} (4 or 8)")
        if self.block_size not in BLOCK_SIZES:
            raise UserError(
                f"unsupported block size {self.block_size} (one of {', '.join(map(str, BLOCK_SIZES))})"
            )

    @property
    def name(self) -> str:
        return f"int{self.bits}{'' if self.symmetric else '_asym'}_b{self.block_size}"

    @property
    def levels(self) -> int:
        return 1 << self.bits

    @property
    def mid(self) -> int:
        return 1 << (self.bits - 1)

    @property
    def bits_per_weight(self) -> float:
        return self.bits + 16 / self.block_size + (0 if self.symmetric else 16 / self.block_size)


def parse_scheme(text: str, block_size: int = 32, symmetric: bool = True) -> QuantScheme:
    """'int8' | 'int4' | 'int4_asym' -> QuantScheme."""
    t = text.lower()
    asym = t.endswith("_asym")
    t = t.removesuffix("_asym")
    if t not in ("int8", "int4"):
        raise UserError(f"unknown quantization {text!r} (int8, int4, int4_asym, int8_asym)")
    return QuantScheme(int(t[3:]), block_size, symmetric and not asym)
