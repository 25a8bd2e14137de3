"""Bytes one decode step must read from memory, from an artifact's actual tensors.

Every weight a token passes through is read once per step: all attention, dense-FFN, shared-expert, router
and norm tensors; of the routed experts only the active ones (top_k of E, so top_k/E of their bytes); of
the embedding one row; the lm_head in full. Plus the KV cache: every layer reads its keys and values for
the positions it attends to (all of them, or the last `window` on a sliding layer), at the element size of
the cache type the runtime holds (KV_PRECISIONS: f32 4 bytes, f16 2, q8_0 34/32, q4_0 18/32).

Each format has one inventory function (a row in INVENTORIES) that lists the artifact's tensors with a role
and reads the attention geometry the KV cache needs from the artifact itself (ONNX graph, GGUF metadata,
config.json), so a foreign artifact (llama.cpp's converter, onnxruntime-genai's builder) is counted the
same way as ours.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# "table": a lookup table that is not a model weight (rotary cos/sin): one row read per step, and left out
# of bits per weight.
ROLES = ("embedding", "lm_head", "routed", "dense", "table")


@dataclass(frozen=True)
class TensorBytes:
    name: str
    role: str  # one of ROLES; a tied embedding that is also the lm_head is "lm_head" (read in full)
    stored_bytes: int  # in the artifact file
    resident_bytes: int  # what the runtime reads per use (the reference upcasts to float32)
    numel: int  # logical weights it holds (0 for quantization scales / zero points)
    rows: int = 0  # embedding rows (vocabulary), for the one-row read


@dataclass(frozen=True)
class DecodeGeometry:
    """What the KV cache and expert routing cost depends on, read from the artifact."""

    num_layers: int
    kv_heads: tuple[int, ...]  # per layer
    head_dim: int
    windows: tuple[int | None, ...]  # per layer: None = full attention
    expert_fraction: float  # top_k / num_experts of the routed-expert bytes (1.0 without MoE)
    kv_bytes_per_element: float  # 4 (f32 cache), 2 (f16), 34/32 (q8_0), ...
    # Per-channel cache scales (onnxruntime's quantized cache): bytes per K/V channel and layer, read every
    # step whatever the context. 0 for float caches and for llama.cpp's blocks (their scales are in the
    # element size).
    kv_scale_bytes_per_channel: float = 0.0
    kv_cache: str | None = None  # the cache type these sizes describe (KV_PRECISIONS name), when known
    # Rows a decode step scans on each sliding layer when the runtime reads more than the window (ONNX
    # sliding_window_cache: all w + 16 rows of its buffer); None: the window itself.
    window_rows: tuple[int | None, ...] | None = None

    @property
    def max_window(self) -> int | None:
        ws = [w for w in self.windows if w]
        return max(ws) if ws else None


@dataclass(frozen=True)
class KVPrecision:
    """What one cached key or value element costs in a runtime's KV cache."""

    bytes_per_element: float  # block scales included
    scale_bytes_per_channel: float = 0.0  # per-channel scales (per layer, for K and for V)


# llama.cpp's cache types, in ggml's block sizes: q8_0 = 32 int8 + one f16 scale (34 bytes per 32),
# q4_0 = 32 4-bit codes + one f16 scale (18 bytes per 32). Adding a cache type is one row here.
KV_PRECISIONS: dict[str, KVPrecision] = {
    "f32": KVPrecision(4.0),
    "f16": KVPrecision(2.0),
    "q8_0": KVPrecision(34 / 32),
    "q4_0": KVPrecision(18 / 32),
}
# Where a format stores a cache type differently: onnxruntime's GroupQueryAttention quantizes its cache to
# plain int8 / int4 codes with float32 scales per channel (k_scale / v_scale), constant in the context.
FORMAT_KV_PRECISIONS: dict[str, dict[str, KVPrecision]] = {
    "onnx": {"q8_0": KVPrecision(1.0, 4.0), "q4_0": KVPrecision(0.5, 4.0)},
}


def kv_precision(fmt: str, kv_cache: str) -> KVPrecision:
    """The element cost of cache type `kv_cache` in format `fmt`'s runtime."""
    from ..errors import UserError

    found = FORMAT_KV_PRECISIONS.get(fmt, {}).get(kv_cache) or KV_PRECISIONS.get(kv_cache)
    if found is None:
        raise UserError(f"no byte model for a {kv_cache!r} KV cache (known: {', '.join(KV_PRECISIONS)})")
    return found


def with_kv_cache(geom: DecodeGeometry, fmt: str, kv_cache: str) -> DecodeGeometry:
    """The same geometry with the element size of the cache type the runtime actually holds."""
    from dataclasses import replace

    p = kv_precision(fmt, kv_cache)
    return replace(
        geom,
        kv_bytes_per_element=p.bytes_per_element,
        kv_scale_bytes_per_channel=p.scale_bytes_per_channel,
        kv_cache=kv_cache,
    )


@dataclass
class Inventory:
    format: str
    tensors: list[TensorBytes]
    geometry: DecodeGeometry
    notes: list[str] = field(default_factory=list)

    def stored_bytes(self) -> int:
        return sum(t.stored_bytes for t in self.tensors)

    def bits_per_weight(self) -> float:
        """8 x stored bytes / logical weights (scales and zero points count as bytes, not weights)."""
        weights = [t for t in self.tensors if t.role != "table"]
        n = sum(t.numel for t in weights)
        return 8.0 * sum(t.stored_bytes for t in weights) / n if n else 0.0


@dataclass(frozen=True)
class StepBytes:
    weights: int
    kv: int
    context: int

    @property
    def total(self) -> int:
        return self.weights + self.kv

    def to_json(self) -> dict:
        return {"weights": self.weights, "kv": self.kv, "total": self.total, "context": self.context}


def weight_bytes_per_token(inv: Inventory) -> int:
    total = 0.0
    for t in inv.tensors:
        if t.role in ("embedding", "table"):
            total += t.resident_bytes / max(t.rows, 1)
        elif t.role == "routed":
            total += t.resident_bytes * inv.geometry.expert_fraction
        else:
            total += t.resident_bytes
    return int(total)


def kv_bytes_per_token(geom: DecodeGeometry, context: int, use_window: bool = True) -> int:
    """K and V read by one decode step at `context` cached positions (window-capped on sliding layers)."""
    total = 0.0
    rows = geom.window_rows or geom.windows
    for heads, window, held in zip(geom.kv_heads, geom.windows, rows, strict=True):
        seen = min(context, held or window) if (window and use_window) else context
        channels = 2 * heads * geom.head_dim  # K and V
        total += channels * seen * geom.kv_bytes_per_element
        if seen:
            total += channels * geom.kv_scale_bytes_per_channel
    return int(total)


def kv_cache_bytes(geom: DecodeGeometry, context: int) -> int:
    """Bytes the KV cache must hold with `context` positions cached: every layer keeps what it attends to
    (a sliding layer its last `window` positions), so it equals what one decode step reads. A runtime's
    own buffers can be larger (preallocated to its context, padded); Session.kv_cache_bytes() says."""
    return kv_bytes_per_token(geom, context)


def bytes_per_token(inv: Inventory, context: int, use_window: bool = True) -> StepBytes:
    return StepBytes(
        weight_bytes_per_token(inv), kv_bytes_per_token(inv.geometry, context, use_window), context
    )


# -- one inventory per format ----------------------------------------------------------------------
def _hf_inventory(path: Path, kv_bytes: float | None) -> Inventory:
    from ..model.checkpoint import _DTYPE_BYTES, open_checkpoint
    from ..model.spec import MoEFFN

    ckpt = open_checkpoint(path)
    spec = ckpt.spec
    lm_head = "model.embed_tokens.weight" if spec.tie_word_embeddings else "lm_head.weight"
    tensors = []
    for name, info in ckpt.tensors.items():
        if name == "lm_head.weight" and spec.tie_word_embeddings:
            continue  # a stale copy transformers ignores
        numel = int(np.prod(info.shape, dtype=np.int64))
        if name == lm_head:
            role = "lm_head"
        elif name == "model.embed_tokens.weight":
            role = "embedding"
        elif ".mlp.experts." in name:
            role = "routed"
        else:
            role = "dense"
        # The reference runs in float32 whatever the file holds.
        tensors.append(
            TensorBytes(name, role, numel * _DTYPE_BYTES[info.dtype], numel * 4, numel, info.shape[0])
        )
    moe = [layer.ffn for layer in spec.layers if isinstance(layer.ffn, MoEFFN)]
    frac = moe[0].top_k / moe[0].num_experts if moe else 1.0
    geom = DecodeGeometry(
        spec.num_layers,
        (spec.num_kv_heads,) * spec.num_layers,
        spec.head_dim,
        spec.windows,
        frac,
        kv_bytes or 4.0,
    )
    return Inventory("hf", tensors, geom)


_ONNX_CHAIN_OPS = ("Cast", "Reshape", "Identity", "Squeeze", "Unsqueeze", "Flatten")
_DEFAULT_BITS = {"MatMulNBits": 4, "GatherBlockQuantized": 4, "QMoE": 4}  # the schemas' defaults


def _vocab_rows(model_file: Path, t) -> int:
    """Rows of a (block-)quantized embedding table: genai_config's vocab_size, else its first dim."""
    cfg = model_file.parent / "genai_config.json"
    if cfg.is_file():
        import json

        vocab = json.loads(cfg.read_text()).get("model", {}).get("vocab_size")
        if vocab:
            return int(vocab)
    return int(t.dims[0])


def _onnx_inventory(path: Path, kv_bytes: float | None) -> Inventory:
    import onnx
    from onnx import TensorProto, helper

    model_file = path / "model.onnx" if path.is_dir() else path
    model = onnx.load(str(model_file), load_external_data=False)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    schemas = _ort_schema_inputs()

    def nbytes(t) -> int:
        n = int(np.prod(t.dims, dtype=np.int64))
        if t.data_type in (TensorProto.INT4, TensorProto.UINT4):
            return (n + 1) // 2
        return n * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize

    def trace(name: str):
        """The node that computes `name`, looking through casts and reshapes."""
        node = producer.get(name)
        while node is not None and node.op_type in _ONNX_CHAIN_OPS:
            node = producer.get(node.input[0])
        return node

    def source(name: str) -> str | None:
        """The initializer behind `name`, looking through reshapes (a tied table feeds two ops)."""
        while name not in inits and name in producer and producer[name].op_type in _ONNX_CHAIN_OPS:
            name = producer[name].input[0]
        return name if name in inits else None

    role: dict[str, str] = {}
    numel: dict[str, int] = {n: int(np.prod(t.dims, dtype=np.int64)) for n, t in inits.items()}
    rows: dict[str, int] = {}
    moe_k: list[float] = []
    gqa = []
    for node in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        slots = schemas.get((node.domain or "ai.onnx", node.op_type), ())
        bits = attrs.get("bits") or attrs.get("expert_weight_bits") or _DEFAULT_BITS.get(node.op_type)
        inputs = [source(i) for i in node.input]
        for i, init in enumerate(inputs):
            if init is None:
                continue
            slot = slots[i] if i < len(slots) else ""
            if "scale" in slot or "zero_point" in slot or slot == "g_idx":
                numel[init] = 0  # quantization overhead: bytes, not weights
            elif bits and (slot in ("B", "data") or slot.endswith("weights")):
                numel[init] = nbytes(inits[init]) * 8 // int(bits)
        if node.op_type in ("MoE", "QMoE"):
            for init in inputs[2:]:
                if init is not None and not init.startswith("router"):
                    role[init] = "routed"
            if inputs[2] is not None:
                moe_k.append(int(attrs.get("k", 1)) / int(inits[inputs[2]].dims[0]))
        elif node.op_type == "GroupQueryAttention":
            gqa.append(attrs)
            # Rotary tables: one row (position) read per step, like an embedding.
            for init in inputs[7:9]:
                if init is not None:
                    role[init] = "table"
                    rows[init] = int(inits[init].dims[0])
        elif node.op_type in ("Gather", "GatherBlockQuantized") and inputs[0] is not None:
            src = node.input[1]
            while src in producer and producer[src].op_type in _ONNX_CHAIN_OPS:
                src = producer[src].input[0]
            if src == "input_ids":
                n_rows = int(np.prod(inits[inputs[0]].dims[:1])) if node.op_type == "Gather" else 0
                for init in (inputs[0], *inputs[2:]):
                    if init is not None:
                        role.setdefault(init, "embedding")
                        rows[init] = n_rows or _vocab_rows(model_file, inits[init])
    head = trace("logits")
    if head is not None:
        for inp in head.input:
            init = source(inp)
            if (
                init is None
                and inp in producer
                and producer[inp].op_type in ("Transpose", "DequantizeLinear")
            ):
                init = next((x for x in map(source, producer[inp].input) if x is not None), None)
            if init is not None:
                role[init] = "lm_head"  # a tied table is read in full by the head
    tensors = [
        TensorBytes(n, role.get(n, "dense"), nbytes(t), nbytes(t), numel[n], rows.get(n, 0))
        for n, t in inits.items()
    ]
    geom = _onnx_geometry(g, gqa, moe_k, kv_bytes, inits)
    return Inventory("onnx", tensors, geom)


def _onnx_geometry(g, gqa: list[dict], moe_k: list[float], kv_bytes: float | None, inits) -> DecodeGeometry:
    from onnx import helper

    from ..exporters.onnx.kv_cache import window_capacity

    past = [i for i in g.input if i.name.startswith("past_key_values.") and i.name.endswith(".key")]
    past.sort(key=lambda i: int(i.name.split(".")[1]))
    head_dim = 0
    elem = 4.0
    heads: list[int] = []
    for p in past:
        t = p.type.tensor_type
        dims = [d.dim_value for d in t.shape.dim]
        elem = float(np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)).itemsize)
        if len(dims) == 4:
            heads.append(dims[1])
            head_dim = dims[3] or head_dim
    if not head_dim and "cos_cache" in inits:
        head_dim = 2 * int(inits["cos_cache"].dims[1])  # rotary tables hold head_dim / 2 frequencies
    n = len(past) or len(gqa)
    if len(gqa) == n:
        heads = [int(a.get("kv_num_heads", h)) for a, h in zip(gqa, heads or [0] * n, strict=True)]
        # local_window_size -1 means full attention.
        windows = tuple(int(w) if (w := a.get("local_window_size", -1)) > 0 else None for a in gqa)
        window_rows = tuple(
            window_capacity(w) if w and a.get("sliding_window_cache") else w for a, w in zip(gqa, windows, strict=True)
        )
    else:
        windows = window_rows = (None,) * n
    return DecodeGeometry(
        n,
        tuple(heads) if heads else (0,) * n,
        head_dim,
        windows,
        moe_k[0] if moe_k else 1.0,
        kv_bytes or elem,
        window_rows=window_rows,
    )


def _ort_schema_inputs() -> dict[tuple[str, str], tuple[str, ...]]:
    """Input names of onnxruntime's (contrib) operators, so roles come from the op's own schema."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

        return {
            (s.domain or "ai.onnx", s.name): tuple(i.name for i in s.inputs)
            for s in ort_state.get_all_operator_schema()
            if s.name in ("MatMulNBits", "GatherBlockQuantized", "MoE", "QMoE")
        }
    except Exception:  # schemas unavailable: fall back to name-free rules (counts stay approximate)
        return {}


def _gguf_inventory(path: Path, kv_bytes: float | None) -> Inventory:
    from gguf import GGUFReader

    r = GGUFReader(str(path))

    def field(key: str, default=None):
        f = r.fields.get(key)
        if f is None:
            return default
        vals = f.contents()
        return vals

    arch = field("general.architecture")
    names = {t.name for t in r.tensors}
    tied = "output.weight" not in names
    tensors = []
    for t in r.tensors:
        if t.name == "token_embd.weight":
            role = "lm_head" if tied else "embedding"
        elif t.name == "output.weight":
            role = "lm_head"
        elif "_exps." in t.name:
            role = "routed"
        else:
            role = "dense"
        # GGUF shapes are fastest-dim first: the row count (vocabulary) is the last entry.
        tensors.append(
            TensorBytes(t.name, role, int(t.n_bytes), int(t.n_bytes), int(t.n_elements), int(t.shape[-1]))
        )
    n_layers = int(field(f"{arch}.block_count"))
    n_heads = int(field(f"{arch}.attention.head_count"))
    kv = field(f"{arch}.attention.head_count_kv", n_heads)
    kv_heads = tuple(int(x) for x in kv) if isinstance(kv, list) else (int(kv),) * n_layers
    head_dim = (
        int(field(f"{arch}.attention.key_length", 0)) or int(field(f"{arch}.embedding_length")) // n_heads
    )
    window = field(f"{arch}.attention.sliding_window")
    pattern = field(f"{arch}.attention.sliding_window_pattern")
    if window and isinstance(pattern, list) and len(pattern) == n_layers:
        windows = tuple(int(window) if p else None for p in pattern)
    elif window:
        windows = (int(window),) * n_layers
    else:
        windows = (None,) * n_layers
    experts = field(f"{arch}.expert_count")
    used = field(f"{arch}.expert_used_count")
    frac = int(used) / int(experts) if experts and used else 1.0
    # Our llama.cpp session keeps a float32 cache (type_k/type_v, for parity); llama.cpp's default is f16.
    geom = DecodeGeometry(n_layers, kv_heads, head_dim, windows, frac, kv_bytes or 4.0)
    return Inventory("gguf", tensors, geom)


INVENTORIES: dict[str, Callable[[Path, float | None], Inventory]] = {
    "hf": _hf_inventory,
    "onnx": _onnx_inventory,
    "gguf": _gguf_inventory,
}


def inventory(path: str | Path, fmt: str, kv_bytes_per_element: float | None = None) -> Inventory:
    """The artifact's tensors with their roles, and its decode geometry."""
    from ..errors import ArtifactError

    if fmt not in INVENTORIES:
        raise ArtifactError(f"no byte inventory for format {fmt!r}", path)
    return INVENTORIES[fmt](Path(path), kv_bytes_per_element)


def artifact_file_bytes(path: str | Path) -> int:
    """Size on disk: the file, or every file in the folder."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
