"""GGUF storage types: which quant name is made how, and byte packing of our QuantizedTensor codes.

Q8_0 / Q4_0 / Q4_1 are packed here from the codes our quantizer produced (so the ONNX and GGUF artifacts
carry the same numbers); Q5_0 / Q5_1 come from gguf's numpy quantizer; K-quants from llama.cpp's own
quantizer run on a float GGUF we write first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import LlamaFileType as F

from ...quant.tensor import QuantizedTensor

BLOCK = 32  # every GGUF type we write uses 32-wide blocks (K-quants: 256, decided by llama.cpp)


@dataclass(frozen=True)
class GGUFQuant:
    name: str
    matrix_type: T  # storage type of the quantized 2-D/3-D matrices
    file_type: F  # general.file_type
    maker: str  # "float" (no quantization), "ours" (packed from QuantizedModel), "gguf", "llama.cpp"
    llama_ftype: int | None = None  # llama_ftype for llama_model_quantize (K-quants)


QUANTS: dict[str, GGUFQuant] = {
    q.name: q
    for q in (
        GGUFQuant("f32", T.F32, F.ALL_F32, "float"),
        GGUFQuant("f16", T.F16, F.MOSTLY_F16, "float"),
        GGUFQuant("q8_0", T.Q8_0, F.MOSTLY_Q8_0, "ours"),
        GGUFQuant("q4_0", T.Q4_0, F.MOSTLY_Q4_0, "ours"),
        GGUFQuant("q4_1", T.Q4_1, F.MOSTLY_Q4_1, "ours"),
        GGUFQuant("q5_0", T.Q5_0, F.MOSTLY_Q5_0, "gguf"),
        GGUFQuant("q5_1", T.Q5_1, F.MOSTLY_Q5_1, "gguf"),
        GGUFQuant("q4_k_m", T.Q4_K, F.MOSTLY_Q4_K_M, "llama.cpp", 15),
        GGUFQuant("q5_k_m", T.Q5_K, F.MOSTLY_Q5_K_M, "llama.cpp", 17),
        GGUFQuant("q6_k", T.Q6_K, F.MOSTLY_Q6_K, "llama.cpp", 18),
    )
}


def ggml_type_for(q: QuantizedTensor) -> T | None:
    """The GGUF block type that holds exactly these codes, or None if none does (block size, padding)."""
    s = q.scheme
    if s.block_size != BLOCK or q.padded:
        return None
    if s.bits == 8 and s.symmetric:
        return T.Q8_0
    if s.bits == 4:
        return T.Q4_0 if s.symmetric else T.Q4_1
    return None


def _nibbles(codes: np.ndarray) -> np.ndarray:
    """[..., nb, 32] 4-bit codes -> [..., nb, 16] bytes: element j in the low nibble, j+16 in the high one."""
    return (codes[..., :16] | (codes[..., 16:] << np.uint8(4))).astype(np.uint8)


def pack(q: QuantizedTensor) -> tuple[np.ndarray, T]:
    """GGUF bytes [..., n_blocks * block_bytes] for a quantized tensor, and their type.

    Q8_0: d, int8 q (value d*q)              == (code - 128) * scale
    Q4_0: d, nibbles q (value d*(q - 8))     == (code - 8) * scale
    Q4_1: d, m, nibbles q (value d*q + m)    == (code - zero) * scale with m = -zero * scale, exact in f16
    """
    qtype = ggml_type_for(q)
    if qtype is None:
        raise ValueError(f"{q.name}: scheme {q.scheme.name} (padded={q.padded}) has no GGUF block type")
    lead = q.codes.shape[:-1]
    nb = q.n_blocks
    codes = q.codes.reshape(*lead, nb, BLOCK)
    d = q.scales.astype(np.float16).reshape(*lead, nb, 1).view(np.uint8)
    if qtype == T.Q8_0:
        qs = (codes.astype(np.int16) - 128).astype(np.int8).view(np.uint8)
        parts = [d, qs]
    elif qtype == T.Q4_0:
        parts = [d, _nibbles(codes)]
    else:
        m32 = -q.zeros.astype(np.float32) * q.scales.astype(np.float32)
        m = m32.astype(np.float16)
        if not np.array_equal(m.astype(np.float32), m32):
            raise ValueError(f"{q.name}: -zero*scale is not exact in float16 (scales not rounded for Q4_1)")
        parts = [d, m.reshape(*lead, nb, 1).view(np.uint8), _nibbles(codes)]
    blocks = np.concatenate(parts, axis=-1)
    return np.ascontiguousarray(blocks.reshape(*lead, -1)), qtype


def quantize_float(w: np.ndarray, qtype: T) -> np.ndarray:
    """gguf's numpy reference quantizer (Q5_0 / Q5_1 / Q8_0 from floats)."""
    from gguf.quants import quantize

    return quantize(np.ascontiguousarray(w, dtype=np.float32), qtype)
