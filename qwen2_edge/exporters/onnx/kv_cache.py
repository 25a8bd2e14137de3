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
