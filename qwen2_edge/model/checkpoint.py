"""Lazy, validated access to a Hugging Face safetensors checkpoint directory.

Tensors are memory-mapped (safetensors.safe_open) and materialized one at a time, so a model never
needs two float copies in memory. Pickle formats are refused, never opened.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import CheckpointError
from .builtin import resolve_model_path
from .layout import expected_tensors, layer_prefix
from .spec import ModelSpec, MoEFFN, read_spec

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}


@dataclass
class TensorInfo:
    file: Path
    dtype: str
    shape: tuple[int, ...]


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Parse and validate a safetensors header; a truncated or corrupt file is a one-line error."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError("truncated safetensors file (no header)", path)
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100 * 2**20:
            raise CheckpointError(
                "truncated or corrupt safetensors file (header length beyond end of file)", path
            )
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointError("corrupt safetensors header (not JSON)", path) from None
    data_len = size - 8 - n
    out: dict[str, TensorInfo] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = meta["dtype"], tuple(meta["shape"]), meta["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"corrupt safetensors header entry for {name!r}", path) from None
        if end > data_len:
            raise CheckpointError(
                f"truncated safetensors file: tensor {name!r} ends at byte {end} of {data_len} data bytes",
                path,
            )
        numel = 1
        for d in shape:
            numel *= d
        if dtype in _DTYPE_BYTES and end - start != numel * _DTYPE_BYTES[dtype]:
            raise CheckpointError(
                f"corrupt safetensors file: tensor {name!r} size disagrees with its shape", path
            )
        out[name] = TensorInfo(path, dtype, shape)
    return out


@dataclass
class Checkpoint:
    """A validated checkpoint directory. `tensor(name)` reads one tensor lazily (HF names)."""

    path: Path
    spec: ModelSpec
    tensors: dict[str, TensorInfo]
    fused_expert_layers: frozenset[int] = frozenset()
    _handles: dict[Path, object] = field(default_factory=dict, repr=False)

    # -- access ---------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self.tensors)

    def has(self, name: str) -> bool:
        return name in self.tensors

    def tensor(self, name: str, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
        info = self.tensors.get(name)
        if info is None:
            raise CheckpointError(f"tensor {name!r} not found", self.path)
        handle = self._handles.get(info.file)
        if handle is None:
            from safetensors import safe_open

            try:
                handle = safe_open(str(info.file), framework="pt")
            except Exception as e:
                raise CheckpointError(f"cannot open safetensors file ({e})", info.file) from None
            self._handles[info.file] = handle
        t = handle.get_tensor(name)
        return t if dtype is None else t.to(dtype)

    def release(self) -> None:
        """Unmap the weight files. Pages read through the mappings count as resident memory; after a pass
        over every tensor (quantization) this returns them, and later reads map the files again."""
        self._handles.clear()

    def lm_head(self, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
        name = "model.embed_tokens.weight" if self.spec.tie_word_embeddings else "lm_head.weight"
        return self.tensor(name, dtype)

    def experts(self, layer: int, dtype: torch.dtype | None = torch.float32) -> tuple[torch.Tensor, ...]:
        """Stacked routed-expert weights of a MoE layer: gate [E,I,H], up [E,I,H], down [E,H,I]."""
        ffn = self.spec.layers[layer].ffn
        if not isinstance(ffn, MoEFFN):
            raise ValueError(f"layer {layer} is not a MoE layer")
        m = layer_prefix(layer) + "mlp.experts."
        if layer in self.fused_expert_layers:
            gate_up = self.tensor(m + "gate_up_proj", dtype)
            gate, up = gate_up.chunk(2, dim=1)
            return gate.contiguous(), up.contiguous(), self.tensor(m + "down_proj", dtype)
        E = ffn.num_experts
        return tuple(
            torch.stack([self.tensor(f"{m}{e}.{proj}.weight", dtype) for e in range(E)])
            for proj in ("gate_proj", "up_proj", "down_proj")
        )

    def iter_tensors(self, dtype: torch.dtype | None = torch.float32) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self.tensors:
            yield name, self.tensor(name, dtype)

    # -- canonical view: experts stacked 3-D, whatever the file layout ---------------------------
    def canonical_names(self) -> list[str]:
        """Tensor names with each MoE layer's experts as three stacked tensors
        `model.layers.N.mlp.experts.{gate_proj,up_proj,down_proj}` ([E, I, H], [E, I, H], [E, H, I]).
        This is the unit quantizers and exporters work on."""
        out: list[str] = []
        for name in expected_tensors(self.spec, set(self.fused_expert_layers)):
            if ".mlp.experts." in name:
                stem = name.split(".mlp.experts.")[0] + ".mlp.experts."
                if stem + "gate_proj" not in out:
                    out += [stem + "gate_proj", stem + "up_proj", stem + "down_proj"]
            else:
                out.append(name)
        return out

    def canonical(self, name: str, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
        """A tensor of the canonical view (stacked experts are assembled on demand)."""
        if ".mlp.experts." in name and name not in self.tensors:
            layer = int(name.split(".")[2])
            idx = ("gate_proj", "up_proj", "down_proj").index(name.rsplit(".", 1)[1])
            return self.experts(layer, dtype)[idx]
        return self.tensor(name, dtype)

    def canonical_shape(self, name: str) -> tuple[int, ...]:
        """Shape of a canonical tensor without reading it (stacked experts are [E, rows, cols])."""
        if name in self.tensors:
            return self.tensors[name].shape
        if ".mlp.experts." not in name:
            raise CheckpointError(f"tensor {name!r} not found", self.path)
        stem, proj = name.rsplit(".", 1)  # model.layers.N.mlp.experts.{gate,up,down}_proj
        fused = self.tensors.get(f"{stem}.gate_up_proj" if proj != "down_proj" else f"{stem}.down_proj")
        if fused is not None:
            E, rows, cols = fused.shape
            return (E, rows // 2, cols) if proj != "down_proj" else (E, rows, cols)
        first = self.tensors[f"{stem}.0.{proj}.weight"].shape
        ffn = self.spec.layers[int(name.split(".")[2])].ffn
        return (ffn.num_experts, *first)

    # -- tokenizer ------------------------------------------------------------------------------
    @property
    def tokenizer_file(self) -> Path:
        return self.path / "tokenizer.json"

    def file_size(self) -> int:
        return sum(f.stat().st_size for f in {i.file for i in self.tensors.values()})


def open_checkpoint(path: str | Path, need_tokenizer: bool = False) -> Checkpoint:
    """Open and validate a checkpoint directory (or `builtin:NAME`)."""
    root = resolve_model_path(path)
    if not root.exists():
        raise CheckpointError("no such file or directory", root)
    if not root.is_dir():
        raise CheckpointError(
            "not a checkpoint directory (expected a folder with config.json and *.safetensors)", root
        )
    spec = read_spec(root / "config.json")
    files = _weight_files(root)
    tensors: dict[str, TensorInfo] = {}
    for f in files:
        for name, info in read_safetensors_header(f).items():
            if name in tensors:
                raise CheckpointError(f"tensor {name!r} appears in two shards", f)
            tensors[name] = info
    fused = frozenset(
        layer.index
        for layer in spec.layers
        if isinstance(layer.ffn, MoEFFN) and layer_prefix(layer.index) + "mlp.experts.gate_up_proj" in tensors
    )
    _check_tensors(root, spec, tensors, fused)
    if need_tokenizer and not (root / "tokenizer.json").is_file():
        raise CheckpointError("no tokenizer.json", root)
    return Checkpoint(root, spec, tensors, fused)


def _weight_files(root: Path) -> list[Path]:
    index = root / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise CheckpointError(
                "invalid safetensors index (expected a 'weight_map' object)", index
            ) from None
        files = sorted({root / f for f in weight_map.values()})
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"shard {f.name} listed in the index is missing", index)
        return files
    files = sorted(root.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in root.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"only pickle weights ({', '.join(pickles)}) found; pickle files can run code when loaded and are "
            "never opened - convert them to safetensors with a trusted tool first",
            root,
        )
    raise CheckpointError("no *.safetensors weights found", root)


def _check_tensors(
    root: Path, spec: ModelSpec, tensors: dict[str, TensorInfo], fused: frozenset[int]
) -> None:
    expected = expected_tensors(spec, set(fused))
    for name, shape in expected.items():
        info = tensors.get(name)
        if info is None:
            raise CheckpointError(f"tensor {name!r} is missing (expected by config.json)", root)
        if info.shape != shape:
            raise CheckpointError(
                f"tensor {name!r} has shape {list(info.shape)} but config.json implies {list(shape)}",
                info.file,
            )
        if info.dtype not in ("F32", "F16", "BF16", "F64"):
            raise CheckpointError(f"tensor {name!r} has unsupported dtype {info.dtype}", info.file)
    extra = [
        n for n in tensors if n not in expected and not (n == "lm_head.weight" and spec.tie_word_embeddings)
    ]
    if extra:
        more = f" (and {len(extra) - 3} more)" if len(extra) > 3 else ""
        raise CheckpointError(
            f"unexpected tensor(s) {', '.join(extra[:3])}{more} not described by config.json", root
        )
