"""Sequential (layer-by-layer) calibration driver for GPTQ on Qwen2 and Qwen2-MoE.

The float model (transformers, fp32, CPU) is loaded once and quantized in place: calibration hidden states
enter decoder layer i, the inputs of each of its matrices are gathered into Gram matrices, the matrices are
quantized in the order the data flows through them (q/k/v, o, FFN input side, FFN output side, each group
seeing the previous groups already quantized), the dequantized weights are written back, and the layer's
QUANTIZED outputs become layer i+1's inputs. Peak memory is one float model plus the calibration
activations of one layer.

MoE layers: each routed expert is calibrated only on the tokens the (float) router sends it (top-k of the
router applied to the quantized model's own hidden states, i.e. the routing the quantized model will do).
An expert that receives fewer than `min_expert_tokens` tokens is quantized by round-to-nearest: a Hessian
from a handful of tokens would fit those tokens and hurt the rest.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from typing import Any

import torch

from ...model.checkpoint import Checkpoint
from ...model.spec import MoEFFN
from ..apply import get_weight, set_weight
from ..calibration import DEFAULT_SEQ_LEN, DEFAULT_TOKENS, calibration_tokens
from ..model import QuantizedModel
from ..policy import QuantPolicy
from ..scheme import QuantScheme
from ..tensor import QuantizedTensor, quantize_rtn
from .gptq import CLIP_GRID, gptq_quantize, stack_tensors

MIN_EXPERT_TOKENS = 128


class _Gram:
    """Running sum of x x^T over input rows x [K] (float64), and the row count."""

    def __init__(self) -> None:
        self.h: torch.Tensor | None = None
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).double()
        g = x.T @ x
        self.h = g if self.h is None else self.h + g
        self.n += x.shape[0]


class _Catcher(torch.nn.Module):
    """Stands in for a decoder layer to record the keyword arguments the model passes it (masks, RoPE)."""

    def __init__(self, layer: torch.nn.Module, store: list) -> None:
        super().__init__()
        self.store = store
        self.attention_type = getattr(layer, "attention_type", None)

    def forward(self, hidden_states, **kwargs):
        self.store.append(kwargs)
        return hidden_states


def layer_kwargs(model, ids: torch.Tensor) -> list[dict[str, Any]]:
    """Per-layer forward kwargs for one [1, L] sequence (every calibration sequence has the same L)."""
    base = model.model
    real = base.layers
    store: list[dict[str, Any]] = []
    base.layers = torch.nn.ModuleList([_Catcher(layer, store) for layer in real])
    try:
        base(input_ids=ids, use_cache=False)
    finally:
        base.layers = real
    return store


class _Quantizer:
    """Quantizes canonical tensors per the plan, writes the dequantized values back into the model."""

    def __init__(self, model, plan: dict[str, QuantScheme | None], opts: dict[str, Any]) -> None:
        self.model = model
        self.plan = plan
        self.opts = opts
        self.tensors: dict[str, QuantizedTensor] = {}
        self.methods: dict[str, str] = {}

    def wanted(self, name: str) -> bool:
        return self.plan.get(name) is not None

    def rtn(self, name: str) -> None:
        w = get_weight(self.model, name).numpy()
        self._store(name, quantize_rtn(name, w, self.plan[name]), "rtn")

    def gptq(self, name: str, gram: _Gram) -> None:
        if not self.wanted(name):
            return
        w = get_weight(self.model, name)
        q = gptq_quantize(name, w.numpy(), gram.h, self.plan[name], **self.opts)
        self._store(name, q, "gptq")

    def _store(self, name: str, q: QuantizedTensor, method: str) -> None:
        self.tensors[name] = q
        self.methods[name] = method
        set_weight(self.model, name, torch.from_numpy(q.dequantize()))


def _post_attention(layer, hs: list[torch.Tensor], o_in: list[torch.Tensor]):
    """(residual after attention, post-attention-norm output) per sequence, from o_proj's inputs.

    This is the second half of the decoder layer (transformers' Qwen2 / Qwen2-MoE DecoderLayer.forward:
    h + o_proj(attn) -> post_attention_layernorm -> mlp -> + residual); recomputing it from the captured
    o_proj inputs saves re-running attention after o_proj is quantized (tested against layer.forward)."""
    mids, xs = [], []
    for h, a in zip(hs, o_in, strict=True):
        mid = h + layer.self_attn.o_proj(a).reshape(h.shape)
        mids.append(mid)
        xs.append(layer.post_attention_layernorm(mid))
    return mids, xs


def layer_forward_by_parts(layer, h: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """layer(h) computed the way the quantizer does (for the test that keeps the two in step)."""
    _, o_in = _gram_of_module_input(layer, layer.self_attn.o_proj, [h], kwargs)
    mids, xs = _post_attention(layer, [h], o_in)
    return mids[0] + layer.mlp(xs[0])


class _Stop(Exception):
    """Raised by a capture hook: the rest of the layer is not needed for these statistics."""


def _gram_of_module_input(layer, module, hs, kwargs) -> tuple[_Gram, list[torch.Tensor]]:
    """Gram matrix of `module`'s input while the layer runs on hs, plus the inputs themselves.

    The layer stops at `module` (its output is not needed), which skips the costly MoE block."""
    gram, seen = _Gram(), []

    def hook(_mod, args, kw):
        x = args[0] if args else kw["hidden_states"]
        x = x.detach().reshape(-1, x.shape[-1])
        gram.add(x)
        seen.append(x)
        raise _Stop

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for h in hs:
            with contextlib.suppress(_Stop):
                layer(h, **kwargs)
    finally:
        handle.remove()
    return gram, seen


def _quantize_dense_mlp(qz: _Quantizer, mlp, prefix: str, x: torch.Tensor, gram: _Gram) -> None:
    for proj in ("gate_proj", "up_proj"):
        qz.gptq(f"{prefix}{proj}.weight", gram)
    down = _Gram()
    down.add(mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x))  # with the quantized gate/up
    qz.gptq(f"{prefix}down_proj.weight", down)


def _quantize_experts(
    qz: _Quantizer, moe, prefix: str, x: torch.Tensor, ffn: MoEFFN, min_tokens: int
) -> dict[str, Any]:
    """Routed experts, each on its own routed tokens; returns per-expert token counts and fallbacks."""
    names = {p: f"{prefix}experts.{p}" for p in ("gate_proj", "up_proj", "down_proj")}
    probs = torch.softmax(torch.nn.functional.linear(x, moe.gate.weight).float(), dim=-1)
    chosen = torch.topk(probs, ffn.top_k, dim=-1).indices  # [N, top_k]
    counts = [int((chosen == e).any(dim=-1).sum()) for e in range(ffn.num_experts)]
    fallback = [e for e, c in enumerate(counts) if c < min_tokens]
    if not any(qz.wanted(n) for n in names.values()):
        return {"tokens": counts, "rtn_fallback": []}
    gate_w, up_w, down_w = (
        get_weight(qz.model, names[p]).clone() for p in ("gate_proj", "up_proj", "down_proj")
    )
    parts: dict[str, list[QuantizedTensor]] = {p: [] for p in names}
    act = moe.experts.act_fn
    for e in range(ffn.num_experts):
        xe = x[(chosen == e).any(dim=-1)]
        use_gptq = e not in fallback
        cur = {"gate_proj": gate_w[e], "up_proj": up_w[e], "down_proj": down_w[e]}

        def quant(p: str, gram: _Gram | None, e=e, use_gptq=use_gptq, cur=cur) -> torch.Tensor:
            scheme = qz.plan[names[p]]
            if scheme is None:
                return cur[p]
            tag = f"{names[p]}[{e}]"
            if use_gptq:
                q = gptq_quantize(tag, cur[p].numpy(), gram.h, scheme, **qz.opts)
            else:
                q = quantize_rtn(tag, cur[p].numpy(), scheme)
            parts[p].append(q)
            return torch.from_numpy(q.dequantize())

        g_in = _Gram()
        if use_gptq:
            g_in.add(xe)
        gq, uq = quant("gate_proj", g_in), quant("up_proj", g_in)
        g_mid = _Gram()
        if use_gptq:
            g_mid.add(act(xe @ gq.T) * (xe @ uq.T))
        quant("down_proj", g_mid)
    for p, name in names.items():
        if parts[p]:
            qz._store(
                name, stack_tensors(name, parts[p]), "gptq" if len(fallback) < ffn.num_experts else "rtn"
            )
    return {"tokens": counts, "rtn_fallback": fallback}


@torch.no_grad()
def quantize_layerwise(
    ckpt: Checkpoint,
    base: QuantScheme,
    policy: QuantPolicy,
    *,
    calib: list[str] | None = None,
    calib_tokens: int = DEFAULT_TOKENS,
    seq_len: int = DEFAULT_SEQ_LEN,
    damp: float = 0.01,
    act_order: bool = True,
    clip_search: bool = True,
    min_expert_tokens: int = MIN_EXPERT_TOKENS,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    model=None,
) -> QuantizedModel:
    """GPTQ over the whole model, one decoder layer at a time (see module docstring).

    `model`: an already loaded float transformers model to quantize in place (tests, quant-scan);
    by default the checkpoint's reference model is loaded (and consumed).
    """
    from tqdm import tqdm

    from ...model.tokenizer import TextTokenizer
    from ...runtimes.reference import load_reference_model

    if log is None:
        log = (lambda msg: tqdm.write(msg, file=sys.stderr)) if progress else (lambda msg: None)
    names = ckpt.canonical_names()
    plan = {
        n: policy.scheme_for(n, 3 if ".mlp.experts." in n else len(ckpt.tensors[n].shape), base)
        if ".mlp.experts." in n or all(ckpt.tensors[n].shape)  # zero-element: nothing to quantize
        else None
        for n in names
    }
    cal = calibration_tokens(TextTokenizer(ckpt.path), calib, calib_tokens, seq_len)
    if model is None:
        model = load_reference_model(ckpt)
    opts = {"damp": damp, "act_order": act_order, "clip_grid": CLIP_GRID if clip_search else (1.0,)}
    qz = _Quantizer(model, plan, opts)
    experts_info: dict[str, Any] = {}

    # A lookup table has no input activations to calibrate on: embeddings are rounded to nearest, first,
    # so layer 0 already sees the quantized model's inputs.
    embed = "model.embed_tokens.weight"
    if qz.wanted(embed):
        qz.rtn(embed)
    kwargs = layer_kwargs(model, cal.ids[:1])
    hs = [model.model.embed_tokens(cal.ids[i : i + 1]) for i in range(cal.ids.shape[0])]

    layers = model.model.layers
    bar = tqdm(total=len(layers), desc="gptq layers", unit="layer", disable=not progress, file=sys.stderr)
    for i, layer in enumerate(layers):
        p = f"model.layers.{i}."
        kw = kwargs[i]
        attn = layer.self_attn
        # 1. q/k/v share one input: the input norm of the layer's input.
        g = _Gram()
        for h in hs:
            g.add(layer.input_layernorm(h))
        for proj in ("q_proj", "k_proj", "v_proj"):
            qz.gptq(f"{p}self_attn.{proj}.weight", g)
        # 2. o_proj sees the (quantized) attention's output: the one attention pass of this layer.
        g, o_in = _gram_of_module_input(layer, attn.o_proj, hs, kw)
        qz.gptq(f"{p}self_attn.o_proj.weight", g)
        # 3. FFN: every input-side matrix sees the post-attention norm output x (from the quantized o_proj).
        mids, xs = _post_attention(layer, hs, o_in)
        del o_in
        x = torch.cat([t.reshape(-1, t.shape[-1]) for t in xs])
        g = _Gram()
        g.add(x)
        ffn = ckpt.spec.layers[i].ffn
        m = p + "mlp."
        if isinstance(ffn, MoEFFN):
            # Router and shared-expert gate first (float by default): routing below uses their final values.
            qz.gptq(m + "gate.weight", g)
            qz.gptq(m + "shared_expert_gate.weight", g)
            if ffn.shared_intermediate:
                _quantize_dense_mlp(qz, layer.mlp.shared_expert, m + "shared_expert.", x, g)
            info = _quantize_experts(qz, layer.mlp, m, x, ffn, min_expert_tokens)
            experts_info[m + "experts"] = info
            fb = (
                f"; rtn fallback (< {min_expert_tokens} tokens): experts {info['rtn_fallback']}"
                if info["rtn_fallback"]
                else ""
            )
            log(f"layer {i}: calibration tokens per expert {info['tokens']}{fb}")
        else:
            _quantize_dense_mlp(qz, layer.mlp, m, x, g)
        del x
        # 4. The quantized layer's outputs feed the next layer.
        hs = [mid + layer.mlp(xi) for mid, xi in zip(mids, xs, strict=True)]
        del mids, xs
        bar.update(1)
    bar.close()

    head = "lm_head.weight"
    if qz.wanted(head):
        g = _Gram()
        for h in hs:
            g.add(model.model.norm(h))
        qz.gptq(head, g)
    missing = [n for n in names if qz.wanted(n) and n not in qz.tensors]
    for n in missing:  # anything the walk above does not know how to calibrate
        qz.rtn(n)
    info = {
        "calibration": cal.describe(),
        "damp": damp,
        "act_order": act_order,
        "clip_search": clip_search,
        "min_expert_tokens": min_expert_tokens,
        "experts": experts_info,
        "tensor_methods": qz.methods,
    }
    return QuantizedModel(ckpt, base, policy, "gptq", qz.tensors, info)


def expert_token_table(info: dict[str, Any]) -> list[str]:
    """Human-readable lines: calibration tokens per routed expert (for CLI output and reports)."""
    lines = []
    for name, row in info.get("experts", {}).items():
        fb = f", rtn fallback: {row['rtn_fallback']}" if row["rtn_fallback"] else ""
        lines.append(f"{name}: tokens per expert {row['tokens']}{fb}")
    return lines
