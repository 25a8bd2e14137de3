"""The KV-cache contract of our ONNX graphs: which layers hold window-sized buffers, and how big.

Full-attention layers take a past buffer that the caller sizes (onnxruntime-genai: max_length; our
OnnxSession: grown on demand) and shares with the present output, so a decode step writes one row in place.
Sliding layers use GroupQueryAttention's `sliding_window_cache`: a buffer of capacity C = w + slack that the
kernel compacts itself (it keeps the newest L positions at rows [0, L), min(T, w) <= L <= C), so their
memory and the rows a step reads stay constant however long the context grows. The CPU kernel scans all
C rows, and compaction moves the window once every slack + 1 steps; onnxruntime-genai measured slack 16
as the CPU optimum and uses it by default, so do we.

Read by the exporter (graph I/O, genai_config.json) and by runtimes/onnxruntime.py (buffer sizes) from the
graph itself, so a folder is self-describing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WINDOW_CACHE_SLACK = 16
GQA = "GroupQueryAttention"


@dataclass(frozen=True)
class LayerCache:
    """One layer's KV buffer: `window` None = full attention (caller-sized buffer); else the GQA window, and
    `windowed` says whether the graph holds a window-sized buffer (sliding_window_cache) for it."""

    index: int
    window: int | None
    windowed: bool

    def capacity(self, n_ctx: int) -> int:
        """Rows the buffer needs for a context of n_ctx tokens."""
        return self.window + WINDOW_CACHE_SLACK if self.windowed else n_ctx


def window_capacity(window: int) -> int:
    return window + WINDOW_CACHE_SLACK


def resident_rows(total: int, capacity: int, window: int) -> int:
    """Rows [0, L) of a windowed buffer that hold positions after `total` tokens, per onnxruntime's
    GroupQueryAttention contract: L = T while T <= C, then the kernel evicts G = C - W + 1 rows at a time.
    Rows [L, C) are unspecified (uninitialized memory in a freshly allocated present)."""
    if total <= capacity:
        return total
    g = capacity - window + 1
    return total - g * -(-(total - capacity) // g)


def past_names(i: int) -> tuple[str, str]:
    return f"past_key_values.{i}.key", f"past_key_values.{i}.value"


def present_names(i: int) -> tuple[str, str]:
    return f"present.{i}.key", f"present.{i}.value"


def cache_layout(graph) -> list[LayerCache]:
    """Per layer (in layer order), read from the GroupQueryAttention nodes of an onnx GraphProto: the node
    whose past_key input is past_key_values.{i}.key is layer i."""
    out: list[LayerCache] = []
    for node in graph.node:
        if node.op_type != GQA or len(node.input) < 4:
            continue
        past = node.input[3]
        if not past.startswith("past_key_values.") or not past.endswith(".key"):
            continue
        attrs = {a.name: a.i for a in node.attribute if a.type == a.INT}
        w = int(attrs.get("local_window_size", -1))
        out.append(
            LayerCache(int(past.split(".")[1]), None if w <= 0 else w, bool(attrs.get("sliding_window_cache", 0)))
        )
    return sorted(out, key=lambda c: c.index)


# -- KV-cache precision ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class KVType:
    """How one KV-cache precision is expressed in GroupQueryAttention (onnxruntime 1.32 CPU kernel).

    f16 runs the attention op in float16 (its inputs and output cast around it; the kernel accumulates in
    float32). q8_0 / q4_0 keep float32 compute and store the cache as int8 / packed int4 with one calibrated
    scale per channel (k_quant_type = v_quant_type = PER_CHANNEL): onnxruntime's KV quantization is static,
    so the scales come from the artifact's own keys and values on calibration text (manifest.json
    `kv_cache_scales`), unlike llama.cpp's q8_0 / q4_0, which scale every block of 32 on the fly."""

    name: str
    elem_type: int  # onnx.TensorProto element type of past/present
    np_dtype: str
    bits: int
    quantized: bool = False
    float16_compute: bool = False

    def cache_dim(self, head_dim: int) -> int:
        return head_dim * self.bits // 8 if self.bits == 4 else head_dim

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1


def _kv_types() -> dict[str, KVType]:
    from onnx import TensorProto as TP

    return {
        "f32": KVType("f32", TP.FLOAT, "float32", 32),
        "f16": KVType("f16", TP.FLOAT16, "float16", 16, float16_compute=True),
        "q8_0": KVType("q8_0", TP.INT8, "int8", 8, quantized=True),
        "q4_0": KVType("q4_0", TP.UINT8, "uint8", 4, quantized=True),
    }


KV_TYPE_NAMES = ("f32", "f16", "q8_0", "q4_0")


def kv_type(name: str) -> KVType:
    return _kv_types()[name]


def graph_kv_type(graph) -> str:
    """The KV-cache precision a graph was built with, from its first past input's element type and the
    quantization attributes of its attention nodes."""
    from onnx import TensorProto as TP

    elem = next(i.type.tensor_type.elem_type for i in graph.input if i.name.startswith("past_key_values."))
    if elem == TP.FLOAT:
        return "f32"
    if elem == TP.FLOAT16:
        return "f16"
    return "q8_0" if elem == TP.INT8 else "q4_0"


def apply_kv_type(model, kv: KVType, scales: dict[int, tuple[list[float], list[float]]] | None = None) -> None:
    """Rewrite a float32-cache decoder (as the exporter builds it) in place to hold its KV cache as `kv`.

    `scales[layer] = (k_scale, v_scale)`, per channel (kv_heads * head_dim floats), for quantized types."""
    from onnx import TensorProto as TP
    from onnx import helper, numpy_helper

    if kv.name == "f32":
        return
    graph = model.graph
    for vi in [*graph.input, *graph.output]:
        if vi.name.startswith(("past_key_values.", "present.")):
            t = vi.type.tensor_type
            t.elem_type = kv.elem_type
            last = t.shape.dim[-1]
            last.dim_value = kv.cache_dim(last.dim_value)
    new_nodes = []
    casts: dict[str, str] = {}  # float32 name -> its float16 cast (cos/sin caches are shared by every layer)

    def to_f16(name: str) -> str:
        if not name:
            return name
        if name not in casts:
            casts[name] = f"{name}/to_float16"
            new_nodes.append(helper.make_node("Cast", [name], [casts[name]], name=f"{name}/Cast", to=TP.FLOAT16))
        return casts[name]

    for node in graph.node:
        if node.op_type != GQA or not node.input[3].startswith("past_key_values."):
            new_nodes.append(node)
            continue
        layer = int(node.input[3].split(".")[1])
        if kv.float16_compute:
            for j in (0, 1, 2, 7, 8):
                if j < len(node.input):
                    node.input[j] = to_f16(node.input[j])
            out = node.output[0]
            node.output[0] = f"{out}/float16"
            new_nodes.append(node)
            new_nodes.append(helper.make_node("Cast", [node.output[0]], [out], name=f"{out}/Cast", to=TP.FLOAT))
            continue
        if scales is None or layer not in scales:
            raise ValueError(f"no KV-cache scales for layer {layer}")
        stem = node.name.rsplit("/", 1)[0]
        names = []
        for side, values in zip(("k_scale", "v_scale"), scales[layer], strict=True):
            name = f"{stem}/{side}"
            graph.initializer.append(numpy_helper.from_array(np.asarray(values, np.float32), name))
            names.append(name)
        while len(node.input) < 12:
            node.input.append("")
        node.input.extend(names)
        node.attribute.extend(
            [
                helper.make_attribute("k_quant_type", "PER_CHANNEL"),
                helper.make_attribute("v_quant_type", "PER_CHANNEL"),
                helper.make_attribute("kv_cache_bit_width", kv.bits),
            ]
        )
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)


def kv_refusal(kv: KVType, head_dim: int, has_windowed: bool) -> str | None:
    """Why onnxruntime 1.32's CPU kernel cannot hold `kv` for this model, or None (measured: it rejects a
    4-bit windowed cache whose head size is not a multiple of 32 at the first run)."""
    if kv.bits == 4 and has_windowed and head_dim % 32:
        return (
            f"onnxruntime's 4-bit KV cache on sliding layers needs a head size that is a multiple of 32 "
            f"(this model: {head_dim}); use --kv-cache q8_0"
        )
    return None


def scales_from_absmax(kv: KVType, absmax: dict[int, tuple[list[float], list[float]]]):
    """Per-channel scales that map each channel's calibrated |max| to the type's largest code."""
    floor = 1e-6  # a channel that never moved (e.g. a zero-padded head) still needs a positive scale
    return {
        i: tuple([max(a, floor) / kv.qmax for a in side] for side in pair) for i, pair in absmax.items()
    }


CALIBRATION_TOKENS = 512


def calibrate_kv_absmax(model_path, ids: list[int], threads: int | None = None) -> dict[int, tuple[list, list]]:
    """Per layer, the largest |key| and |value| of every channel (kv_heads * head_dim, head-major: the
    layout of GroupQueryAttention's per-channel scales) that the float32-cache graph at `model_path` stores
    while reading `ids`. Keys are taken as cached, i.e. after the rotary embedding.

    Plain onnxruntime with its own (copied) past/present tensors: this runs once at export, and an exporter
    must not depend on a runtime session. Sliding layers keep only their window, so the text is fed in
    chunks no longer than the smallest window and every chunk's rows are seen before they are evicted."""
    import onnx
    import onnxruntime as ort

    graph = onnx.load(str(model_path), load_external_data=False).graph
    layout = cache_layout(graph)
    kv_dims = {
        i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input if i.name.startswith("past_")
    }
    del graph
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    keep = {"num_logits_to_keep": np.array([1], np.int64)} if any(i.name == "num_logits_to_keep" for i in session.get_inputs()) else {}
    step = min([c.window for c in layout if c.windowed] + [64])
    past = {}
    for c in layout:
        for name in past_names(c.index):
            heads, dim = kv_dims[name][1], kv_dims[name][3]
            past[name] = np.zeros((1, heads, window_capacity(c.window) if c.windowed else 0, dim), np.float32)
    absmax = {c.index: [np.zeros(kv_dims[past_names(c.index)[0]][1:4:2], np.float32)] * 2 for c in layout}
    outputs = [n.replace("past_key_values.", "present.") for n in past]
    n = 0
    for start in range(0, len(ids), step):
        chunk = ids[start : start + step]
        n += len(chunk)
        feeds = {"input_ids": np.asarray([chunk], np.int64), "attention_mask": np.ones((1, n), np.int64), **past, **keep}
        present = session.run(outputs, feeds)
        past = dict(zip(past, present, strict=True))
        for c in layout:
            rows = past[past_names(c.index)[0]].shape[2]
            held = resident_rows(n, rows, c.window) if c.windowed else n
            absmax[c.index] = [
                np.maximum(m, np.abs(past[name][0, :, :held]).max(axis=1))
                for m, name in zip(absmax[c.index], past_names(c.index), strict=True)
            ]
    return {i: (k.reshape(-1).tolist(), v.reshape(-1).tolist()) for i, (k, v) in absmax.items()}
