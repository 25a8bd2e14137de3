"""Upper bound of the disk space one export occupies at its peak, temporaries included, from the spec alone.

What `check_free_space` compares with the free space before any expensive work. Measured against real
exports of every format and quant by `python -m benchmarks.fs_estimate` (README, "Faults"), and held to be an
upper bound by tests/test_faults.py. Bounds, not guesses:
- quantized matrices: codes plus one float32 scale and one zero-point byte per block of the given size;
- GGUF: FFN widths padded to 32 (quantized files), a tied embedding written twice where the llama.cpp
  architecture needs output.weight, dense layers of a MoE hybrid written as E expert copies by the encodings
  that need it, rows whose length is not a multiple of 32 kept f32; gguf's writer spills tensor data over
  256 MiB to a temporary file beside the output (fsutil makes it write there) until it copies it in;
- K-quants: llama.cpp quantizes an f16 GGUF written first, so both files exist at once; a K-quant tensor
  llama.cpp cannot block (rows not a multiple of 256) falls back to at most q8_0 (8.5 bits);
- tokenizer files are copied (ONNX) or embedded as token and merge lists (GGUF).
"""

from __future__ import annotations

from pathlib import Path

from ..model.layout import expected_tensors
from ..model.spec import DenseFFN, ModelSpec, MoEFFN

SPILL = 256 * 2**20  # gguf's GGUFWriter(use_temp_file=True) holds this much tensor data in memory
OVERHEAD = 2**20  # graph, metadata, manifest, genai_config (measured: under 0.1 MB on 4 layers), plus:
LAYER_OVERHEAD = 2**16  # per layer: graph nodes, manifest plan rows and KV-cache scales
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
    "generation_config.json", "added_tokens.json", "chat_template.jinja",
)  # fmt: skip
_ROUTING = (".mlp.gate.weight", ".mlp.shared_expert_gate.weight")


def tokenizer_bytes(folder: str | Path) -> int:
    """Bytes of the tokenizer files in a checkpoint folder (what an export copies or embeds)."""
    total = 0
    for name in TOKENIZER_FILES:
        f = Path(folder) / name
        if f.is_file():
            total += f.stat().st_size
    return total


def _overhead(spec: ModelSpec) -> int:
    return OVERHEAD + LAYER_OVERHEAD * spec.num_layers


def _pad(n: int, to: int) -> int:
    return -(-n // to) * to


def _ffn_width(spec: ModelSpec, name: str) -> int | None:
    """The intermediate width a FFN matrix is shaped by (None: not a FFN matrix)."""
    if ".mlp." not in name or name.endswith(_ROUTING):
        return None
    ffn = spec.layers[int(name.split(".")[2])].ffn
    if isinstance(ffn, DenseFFN):
        return ffn.intermediate
    if ".shared_expert." in name:
        return ffn.shared_intermediate
    return ffn.expert_intermediate


def _matrices(spec: ModelSpec, ffn_multiple: int) -> list[tuple[str, int, int]]:
    """(name, elements, row length) of every matrix, FFN widths padded to `ffn_multiple`."""
    out = []
    for name, shape in expected_tensors(spec).items():
        if len(shape) < 2:
            continue
        rows, cols = shape[-2], shape[-1]
        lead = 1
        for d in shape[:-2]:
            lead *= d
        width = _ffn_width(spec, name)
        if width and ffn_multiple > 1:
            if name.endswith("down_proj.weight") or name.endswith("down_proj"):
                cols = _pad(cols, ffn_multiple) if cols == width else cols
            else:
                rows = _pad(rows, ffn_multiple) if rows == width else rows
        out.append((name, lead * rows * cols, cols))
    return out


def _vector_elements(spec: ModelSpec) -> int:
    return sum(_numel(s) for s in expected_tensors(spec).values() if len(s) < 2)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _gguf_duplication(spec: ModelSpec, ffn_multiple: int) -> int:
    """Extra elements when every layer must hold experts: a dense layer written as E copies of its FFN,
    every expert widened to the widest dense FFN (exporters/gguf/archs/base.py duplication_cost)."""
    moes = [layer.ffn for layer in spec.layers if isinstance(layer.ffn, MoEFFN)]
    if not moes:
        return 0
    f, H = moes[0], spec.hidden_size
    dense = [layer.ffn.intermediate for layer in spec.layers if isinstance(layer.ffn, DenseFFN)]
    i_x = _pad(max([f.expert_intermediate, *dense]), ffn_multiple)
    i_e = _pad(f.expert_intermediate, ffn_multiple)
    extra = 0
    for layer in spec.layers:
        if isinstance(layer.ffn, DenseFFN):
            extra += f.num_experts * 3 * H * i_x
        else:
            extra += f.num_experts * 3 * H * (i_x - i_e)
    return extra


def _onnx_bytes(spec: ModelSpec, quant: str, policy, block: int, tok: int) -> tuple[int, int]:
    float_bits = 16 if quant == "f16" else 32
    total = 0.0
    for name, n, cols in _matrices(spec, 1):
        if quant in ("f32", "f16") or name.endswith(_ROUTING):
            action = "float"
        else:
            action = policy.decide(name, 2) if policy is not None else "base"
        if action == "float":
            total += n * float_bits
            continue
        bits = 8 if "int8" in action or (action == "base" and quant == "int8") else 4
        padded = n // cols * _pad(cols, block)  # rows are padded to whole blocks
        total += padded * bits + padded // block * (32 + 8)  # float32 scale + zero point per block
    if spec.tie_word_embeddings and quant not in ("f32", "f16"):
        # a quantized tied table is stored once, its scales and zero points twice (embedding.py)
        total += spec.vocab_size * _pad(spec.hidden_size, block) // block * (32 + 8)
    return int(total / 8) + _vector_elements(spec) * 4 + tok + _overhead(spec), 0


def _gguf_bytes(spec: ModelSpec, quant: str, policy, block: int, tok: int, encoding) -> tuple[int, int]:
    from .gguf.quants import QUANTS

    gq = QUANTS[quant]
    multiple = 1 if gq.maker == "float" else 32
    # Encoding-dependent extras; unknown encoding (no weights yet): the largest.
    tied_twice = spec.tie_word_embeddings and (
        getattr(encoding, "tied_output_required", False) if encoding is not None else spec.is_moe
    )
    duplicates = spec.is_moe and (
        encoding is None or getattr(encoding, "arch", "") in ("qwen2moe", "granite_swa")
    )
    extra = (spec.vocab_size * spec.hidden_size if tied_twice else 0) + (
        _gguf_duplication(spec, multiple) if duplicates else 0
    )
    vocab = 2 * tok + 32 * spec.vocab_size + 2**16
    vectors = _vector_elements(spec) * 4

    def file_bits(bits_of) -> float:
        mats = _matrices(spec, multiple)
        total = sum(n * bits_of(name, cols) for name, n, cols in mats)
        return total + extra * max(bits_of(name, cols) for name, _, cols in mats)

    def ours(name: str, cols: int) -> float:
        if name.endswith(_ROUTING) or cols % 32 or block != 32:
            return 32
        action = policy.decide(name, 2) if policy is not None else "base"
        if action == "float":
            return 32
        if "int8" in action or (action == "base" and quant == "q8_0"):
            # int8 beside q4_1 codes is asymmetric, which no GGUF type holds: stored f32
            return 32 if quant == "q4_1" or action.endswith("_asym") else 8.5
        return 5.0 if quant == "q4_1" or action.endswith("_asym") else 4.5

    def gguf_numpy(name: str, cols: int) -> float:
        if name.endswith(_ROUTING) or cols % 32:
            return 32
        return 8.5 if "embed_tokens" in name or "lm_head" in name else {"q5_0": 5.5, "q5_1": 6.0}[quant]

    def float_(name: str, cols: int) -> float:
        return 32 if quant == "f32" or name.endswith(_ROUTING) else 16

    def kquant(name: str, cols: int) -> float:
        return 32 if name.endswith(_ROUTING) else 16 if cols % 32 else 8.5

    makers = {"float": float_, "ours": ours, "gguf": gguf_numpy, "llama.cpp": kquant}
    data = int(file_bits(makers[gq.maker]) / 8) + vectors
    out = data + vocab + _overhead(spec)
    if gq.maker == "llama.cpp":
        f16 = int(file_bits(float_) / 8) + vectors + vocab + _overhead(spec)
        # the f16 file (and its writer's spill) exist together, then the f16 file and the output
        return out, max(f16 + (f16 if f16 > SPILL else 0) - out, f16)
    return out, (data if data > SPILL else 0)


def estimate_parts(
    spec: ModelSpec,
    fmt: str,
    quant: str,
    policy=None,
    block_size: int | None = None,
    tokenizer: int = 0,
    encoding=None,
) -> tuple[int, int]:
    """(artifact, temporaries): upper bounds of the bytes an export of `spec` to `fmt`/`quant` leaves on the
    output's file system, and of what it holds there besides at its peak. `policy`: the precision policy
    (None: every matrix at `quant`); `tokenizer`: bytes of the tokenizer files; `encoding`: the GGUF
    encoding chosen (None: assume the largest)."""
    block = block_size or 32
    if fmt == "onnx":
        return _onnx_bytes(spec, quant, policy, block, tokenizer)
    if fmt == "gguf":
        return _gguf_bytes(spec, quant, policy, block, tokenizer, encoding)
    raise ValueError(f"no size estimate for format {fmt!r}")


def estimate_bytes(spec: ModelSpec, fmt: str, quant: str, policy=None, block_size: int | None = None,
                   tokenizer: int = 0, encoding=None) -> int:  # fmt: skip
    """Upper bound of the bytes one export holds on the output's file system at its peak."""
    return sum(estimate_parts(spec, fmt, quant, policy, block_size, tokenizer, encoding))
