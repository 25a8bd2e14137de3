"""Token embedding (Gather, or GatherBlockQuantized over quantized rows) and the lm_head projection.

With tied embeddings and a quantized table, the lm_head MatMulNBits and the embedding lookup read ONE
initializer: the MatMulNBits blocks [V, k_blocks, blob]; the lookup sees them through a Reshape to
[V, K * bits / 8] (the same bytes), which onnxruntime folds at load.
"""

from __future__ import annotations

from .graph import MS_DOMAIN, Graph
from .linear import linear, matmul_nbits
from .pack import pack_nbits
from .weights import Weights

EMBED = "model.embed_tokens.weight"
TIED_BLOCKS = "lm_head.MatMul.qweight"


def embedding(g: Graph, w: Weights, ids: str) -> tuple[str, str | None]:
    """(hidden states, the float table's float32-readable name or None when quantized)."""
    node = "/model/embed_tokens"
    q = w.quantized(EMBED)
    if q is None:
        table = w.float_input(g, EMBED, w.array(EMBED))
        return g.op("Gather", [table, ids], f"{node}/Gather", axis=0), table
    packed = pack_nbits(q)
    if w.spec.tie_word_embeddings:
        blocks = g.weight(TIED_BLOCKS, packed.blocks)  # shared with lm_head below
        data = g.op("Reshape", [blocks, g.const([packed.n, -1])], f"{node}/Reshape")
    else:
        data = g.weight("model.embed_tokens.qweight", packed.flat_blocks)
    scales = g.weight("model.embed_tokens.scales", packed.scales)
    inputs = [data, ids, scales]
    if packed.zeros is not None:
        inputs.append(g.weight("model.embed_tokens.qzeros", packed.zeros))
    out = g.op(
        "GatherBlockQuantized",
        inputs,
        f"{node}/GatherBlockQuantized",
        domain=MS_DOMAIN,
        bits=packed.bits,
        block_size=packed.block_size,
        gather_axis=0,
        quantize_axis=1,
    )
    if q.padded:  # rows were padded to whole blocks: drop the padding columns
        out = g.op("Slice", [out, g.const([0]), g.const([q.k]), g.const([-1])], f"{node}/Slice")
    return out, None


def lm_head(g: Graph, w: Weights, x: str, table: str | None, output: str) -> str:
    """Logits written straight to the graph output `output`. `table`: the float tied embedding, if any."""
    node = "/lm_head"
    if not w.spec.tie_word_embeddings:
        y = linear(g, w, x, node, ["lm_head.weight"])
    elif table is not None:
        transposed = g.op("Transpose", [table], f"{node}/Transpose", perm=[1, 0])  # folded at load
        y = g.op("MatMul", [x, transposed], f"{node}/MatMul")
    else:
        packed = pack_nbits(w.quantized(EMBED))
        inputs = [x, TIED_BLOCKS, g.weight("lm_head.MatMul.scales", packed.scales)]
        if packed.zeros is not None:
            inputs.append(g.weight("lm_head.MatMul.qzeros", packed.zeros))
        y = matmul_nbits(g, inputs, node, packed, w.accuracy_level)
    last = g.nodes[-1]  # the node that made y: let it write the graph output (no Identity copy)
    last.output[list(last.output).index(y)] = output
    return output
