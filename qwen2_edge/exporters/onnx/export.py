"""export_onnx: checkpoint (+ QuantizedModel) -> folder with model.onnx, tokenizer, genai_config.json, manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import UnsupportedError, UserError
from ...fsutil import atomic_dir
from ...integrity import record_onnx_folder
from ...model.checkpoint import Checkpoint
from ...quant.model import QuantizedModel
from ..registry import ExportResult
from .decoder import build_decoder
from .genai_config import genai_config
from .weights import Weights

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
MANIFEST = "manifest.json"
# Beyond this the weights go to model.onnx.data: saving then writes tensor by tensor instead of serializing
# one more copy of every weight (measured on the Qwen2-0.5B int4 export: peak 2.67 -> 1.97 GB, 8.3 -> 6.7 s),
# and protobuf caps a single file at 2 GiB anyway.
EXTERNAL_DATA_BYTES = 64 << 20
COPIED_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
)
DEFAULT_ACCURACY_LEVEL = (
    4  # int8 activations in MatMulNBits/QMoE: measured faster (benchmarks/onnx_decode.py)
)


def export_onnx(
    ckpt: Checkpoint,
    out: Path,
    quant: str,
    qmodel: QuantizedModel | None = None,
    force: bool = False,
    threads: int | None = None,
    accuracy_level: int | None = None,
    external_data: bool | None = None,
    kv_cache: str | None = None,
) -> ExportResult:
    """Write the ONNX folder atomically. f32/f16: float weights (f16 = float16 storage, float32 compute);
    int8/int4: the quantized tensors of `qmodel` as MatMulNBits / QMoE / GatherBlockQuantized.

    `kv_cache` (f32 default, f16, q8_0, q4_0) is the KV-cache precision written into the graph, which is
    what onnxruntime-genai runs; our OnnxSession can also switch an f32-cache folder at load time."""
    from .kv_cache import KV_TYPE_NAMES, kv_refusal, kv_type

    kv_cache = kv_cache or "f32"
    if kv_cache not in KV_TYPE_NAMES:
        raise UserError(f"unknown KV-cache type {kv_cache!r} (choose from {', '.join(KV_TYPE_NAMES)})")
    refusal = kv_refusal(kv_type(kv_cache), ckpt.spec.head_dim, ckpt.spec.has_sliding)
    if refusal:  # before any work
        raise UnsupportedError(refusal, ckpt.path)
    if quant in ("f32", "f16"):
        if qmodel is not None:
            raise UserError(f"onnx {quant} export takes no quantized model")
        dtype = np.float32 if quant == "f32" else np.float16
    elif qmodel is None:
        raise UserError(f"onnx {quant} export needs the quantized model")
    else:
        dtype = np.float32
    level = DEFAULT_ACCURACY_LEVEL if accuracy_level is None else accuracy_level
    weights = Weights(ckpt, qmodel, dtype, level if qmodel is not None else 0)
    graph = build_decoder(weights)
    model = graph.model(doc=f"qwen2-edge export of {ckpt.path.name} ({quant})")
    size = sum(t.ByteSize() for t in graph.initializers.values())
    external = size > EXTERNAL_DATA_BYTES if external_data is None else external_data
    plan = qmodel.plan() if qmodel is not None else _float_plan(ckpt, quant)
    ops = graph.op_counts()
    with atomic_dir(out, force) as tmp:
        _save(model, tmp, external)
        del model, graph  # the graph's weights are on disk now; calibration loads them again
        for name in COPIED_FILES:
            if (ckpt.path / name).is_file():
                shutil.copy(ckpt.path / name, tmp / name)
        (tmp / "genai_config.json").write_text(
            json.dumps(genai_config(ckpt.spec, MODEL_FILE, threads), indent=2)
        )
        manifest = _manifest(ckpt, quant, weights, ops, plan, external)
        calibration = _kv_calibration(ckpt, tmp / MODEL_FILE, threads)
        if calibration is not None:
            manifest["kv_cache_scales"] = calibration
        if kv_cache != "f32":
            _bake_kv_cache(tmp / MODEL_FILE, ckpt.spec, kv_cache, calibration)
        manifest["kv_cache"] = kv_cache
        manifest["integrity"] = record_onnx_folder(tmp)  # every file is final now; the manifest goes last
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    nbytes = sum(f.stat().st_size for f in out.iterdir() if f.name in (MODEL_FILE, DATA_FILE))
    return ExportResult(
        path=out,
        format="onnx",
        quant=quant,
        bytes=nbytes,
        bits_per_weight=_bits_per_weight(ckpt, qmodel, quant),
        seconds=0.0,
        plan=plan,
        notes=[
            f"compute float32; {'float16' if quant == 'f16' else 'float32'} float weights"
            + (f"; MatMulNBits/QMoE accuracy_level={level}" if qmodel is not None else ""),
            "ops: " + ", ".join(f"{k}={v}" for k, v in sorted(ops.items())),
        ],
    )


def _kv_calibration(ckpt: Checkpoint, model_path: Path, threads: int | None) -> dict[str, Any] | None:
    """Per-channel |max| of the artifact's own cached keys and values on the built-in training text: what
    the q8_0 / q4_0 KV caches (GroupQueryAttention's static per-channel scales) are sized from. None for a
    checkpoint without a tokenizer (those caches are then refused at run time, naming the reason)."""
    from ...data.corpus import train_texts
    from ...model.tokenizer import TextTokenizer
    from .kv_cache import CALIBRATION_TOKENS, calibrate_kv_absmax

    if not (ckpt.path / "tokenizer.json").is_file():
        return None
    tokenizer, ids = TextTokenizer(ckpt.path), []
    for text in train_texts():
        ids += tokenizer.encode(text)
        if len(ids) >= CALIBRATION_TOKENS:
            break
    ids = ids[:CALIBRATION_TOKENS]
    absmax = calibrate_kv_absmax(model_path, ids, threads)
    return {
        "text": "built-in corpus, training modules",
        "tokens": len(ids),
        "absmax": {
            str(i): {"k": [float(f"{x:.6g}") for x in k], "v": [float(f"{x:.6g}") for x in v]}
            for i, (k, v) in absmax.items()
        },
    }


def _bake_kv_cache(model_path: Path, spec, kv_name: str, calibration: dict[str, Any] | None) -> None:
    """Rewrite the saved graph's KV cache to `kv_name` (its weights stay where they are)."""
    import onnx

    from .kv_cache import apply_kv_type, kv_type, scales_from_absmax

    kv = kv_type(kv_name)
    scales = None
    if kv.quantized:
        if calibration is None:
            raise UserError(f"a {kv_name} KV cache needs calibration text: the checkpoint has no tokenizer.json")
        absmax = {int(i): (d["k"], d["v"]) for i, d in calibration["absmax"].items()}
        scales = scales_from_absmax(kv, absmax)
    model = onnx.load(str(model_path), load_external_data=False)
    apply_kv_type(model, kv, scales)
    onnx.save_model(model, str(model_path))  # external data (if any) is referenced, not rewritten


def _save(model, folder: Path, external: bool) -> None:
    import onnx

    if external:
        onnx.save_model(
            model,
            str(folder / MODEL_FILE),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=DATA_FILE,
            size_threshold=1024,
        )
    else:
        onnx.save_model(model, str(folder / MODEL_FILE))


def _float_plan(ckpt: Checkpoint, quant: str) -> list[dict[str, Any]]:
    kind = "float32" if quant == "f32" else "float16"
    return [{"tensor": name, "quant": kind} for name in ckpt.canonical_names()]


def _bits_per_weight(ckpt: Checkpoint, qmodel: QuantizedModel | None, quant: str) -> float:
    """Stored bits per parameter over every tensor (scales and zero points included)."""
    total_bits = total = 0
    float_bits = 16 if quant == "f16" else 32
    for name in ckpt.canonical_names():
        q = qmodel.tensors.get(name) if qmodel is not None else None
        numel = int(np.prod(ckpt.canonical_shape(name)))
        total += numel
        total_bits += q.nbytes_packed * 8 if q is not None else numel * float_bits
    return total_bits / max(total, 1)


def _manifest(ckpt, quant, weights: Weights, ops: dict[str, int], plan, external: bool) -> dict[str, Any]:
    import onnx
    import onnxruntime

    spec = ckpt.spec
    return {
        "format": "onnx",
        "quant": quant,
        "source": str(ckpt.path),
        "architecture": spec.architecture,
        "spec": spec.to_dict(),
        "windows": list(spec.windows),
        "moe_layers": [layer.index for layer in spec.layers if layer.ffn.kind == "moe"],
        "compute_dtype": "float32",
        "float_storage": "float16" if weights.float_dtype == np.float16 else "float32",
        "accuracy_level": weights.accuracy_level,
        "files": [MODEL_FILE] + ([DATA_FILE] if external else []),
        "op_counts": ops,
        "tool_versions": {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        "plan": plan,
    }
