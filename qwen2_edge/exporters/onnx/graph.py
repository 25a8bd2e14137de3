"""A small ONNX graph under construction: nodes with predictable names, initializers, graph inputs/outputs.

Node names follow onnxruntime-genai's convention (`/model/layers.0/attn/q_proj/MatMul`) and every output is
`{node}/output_{i}`, so error messages, precision plans and profiles can point at nodes by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MS_DOMAIN = "com.microsoft"
OPSET = 21  # default-domain opset: DequantizeLinear with blocks, current Reshape/Gather semantics
FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64
INT32 = TensorProto.INT32


@dataclass
class Graph:
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: dict[str, onnx.TensorProto] = field(default_factory=dict)
    inputs: list[onnx.ValueInfoProto] = field(default_factory=list)
    outputs: list[onnx.ValueInfoProto] = field(default_factory=list)
    _consts: dict[tuple, str] = field(default_factory=dict)

    # -- building blocks --------------------------------------------------------------------------
    def node(
        self,
        op: str,
        inputs: list[str],
        name: str,
        n_out: int = 1,
        domain: str = "",
        outputs: list[str] | None = None,
        **attrs: Any,
    ) -> list[str]:
        """Add one node; outputs default to `{name}/output_{i}`. Returns the output names."""
        outs = outputs if outputs is not None else [f"{name}/output_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, domain=domain or None, **attrs))
        return outs

    def op(self, op: str, inputs: list[str], name: str, domain: str = "", **attrs: Any) -> str:
        """A single-output node; returns its output name."""
        return self.node(op, inputs, name, 1, domain, **attrs)[0]

    def weight(self, name: str, array: np.ndarray) -> str:
        """An initializer (tensors are stored as given: the caller chooses the dtype)."""
        if name in self.initializers:
            raise ValueError(f"duplicate initializer {name}")
        self.initializers[name] = numpy_helper.from_array(np.ascontiguousarray(array), name)
        return name

    def const(self, values: list[int] | int, dtype=np.int64) -> str:
        """A shared small constant initializer such as a Reshape shape or an axis list."""
        arr = np.asarray(values, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            shape = "x".join(map(str, arr.shape)) or "scalar"
            text = "_".join(str(v) for v in arr.reshape(-1).tolist())
            self._consts[key] = self.weight(f"/model/constants/{arr.dtype.name}/{shape}/{text}", arr)
        return self._consts[key]

    def scalar(self, value: float, dtype=np.float32) -> str:
        """A 0-d constant (Range's inputs must be scalars; const() makes shape [1] for a single value)."""
        arr = np.array(value, dtype=dtype)
        name = f"/model/constants/{arr.dtype.name}/scalar/{value}"
        if name not in self.initializers:
            self.initializers[name] = numpy_helper.from_array(arr, name)
        return name

    def add_input(self, name: str, elem_type: int, shape: list[int | str]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def add_output(self, name: str, elem_type: int, shape: list[int | str]) -> str:
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    # -- finish -----------------------------------------------------------------------------------
    def model(self, doc: str = "") -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "qwen2_edge_decoder", self.inputs, self.outputs, list(self.initializers.values())
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)],
            producer_name="qwen2-edge",
            doc_string=doc,
        )
        model.ir_version = 10
        return model

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
        return counts
