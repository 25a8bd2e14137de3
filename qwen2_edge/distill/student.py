"""Student architecture: a small spec (JSON or CLI flags) resolved against the teacher into an HF config,
and initialization from the teacher's weights where shapes allow.

A spec names only what differs from the teacher; the vocabulary is always the teacher's (distillation
compares the two distributions token by token), so a spec that names another vocabulary is refused.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError, read_json_object

ATTN_PARTS = (
    "self_attn.q_proj.weight",
    "self_attn.q_proj.bias",
    "self_attn.k_proj.weight",
    "self_attn.k_proj.bias",
    "self_attn.v_proj.weight",
    "self_attn.v_proj.bias",
    "self_attn.o_proj.weight",
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
)
MLP_PARTS = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class StudentSpec:
    """What the student is. None = take the teacher's value."""

    layers: int = 2
    hidden: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    intermediate: int | None = None  # dense-FFN size
    moe_layers: tuple[int, ...] = ()  # layers with routed experts; the rest stay dense
    num_experts: int = 4
    top_k: int = 2
    expert_intermediate: int | None = None  # None: teacher intermediate / num_experts (one slice each)
    shared_intermediate: int | None = None  # None: the teacher's intermediate (a copy of its MLP)
    norm_topk_prob: bool = False
    # "constant": every shared_expert_gate weight starts at zero and is frozen, so the shared expert always
    # adds exactly sigmoid(0) * W_d x = W_d x / 2. That is what llama.cpp's step35 graph can run exactly
    # (GGUF of a windowed MoE student; exporters/gguf/encoding.py); "learned": Qwen2-MoE's own sigmoid gate.
    shared_gate: str = "learned"
    window: int | None = None  # sliding window w on `window_layers`
    window_layers: tuple[int, ...] = ()
    init_layers: tuple[int, ...] | None = None  # teacher layer for each student layer; None: evenly spaced
    vocab_size: int | None = None  # only checked: must equal the teacher's

    @staticmethod
    def from_json(path: str | Path) -> StudentSpec:
        p = Path(path)
        if not p.is_file():
            raise UserError("no such student spec file", p)
        return StudentSpec.from_dict(read_json_object(p, "student spec"), p)

    @staticmethod
    def from_dict(raw: dict[str, Any], source: str | Path | None = None) -> StudentSpec:
        known = {f.name for f in fields(StudentSpec)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise UserError(
                f"unknown student spec key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})",
                source,
            )
        vals = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
        return StudentSpec(**vals)

    def with_overrides(self, **kw: Any) -> StudentSpec:
        return replace(self, **{k: v for k, v in kw.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


SHARED_GATES = ("learned", "constant")

# The demo student: half the teacher's depth, layer 0 a MoE-hybrid layer (4 experts top-2 each seeded with
# a quarter of the teacher's MLP, plus a shared expert copied from it) with a 64-token sliding window,
# layer 1 dense with full attention. A constant shared-expert gate makes it exactly encodable in GGUF
# (llama.cpp's step35, each dense layer written once) as well as ONNX.
DEFAULT_STUDENT = StudentSpec(
    layers=2,
    moe_layers=(0,),
    num_experts=4,
    top_k=2,
    expert_intermediate=160,  # a multiple of 32: int4/int8 blocks tile every expert matrix exactly
    norm_topk_prob=True,
    shared_gate="constant",
    window=64,
    window_layers=(0,),
)


@dataclass
class InitReport:
    """Where every student tensor came from."""

    layer_map: list[int]
    sources: dict[str, str] = field(default_factory=dict)  # student tensor -> "copy T", "slice T", "random"

    def summary(self) -> str:
        kinds: dict[str, int] = {}
        for how in self.sources.values():
            k = how.split(" ", 1)[0]
            kinds[k] = kinds.get(k, 0) + 1
        parts = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        rnd = [n for n, how in self.sources.items() if how.startswith("random")]
        return f"student layers from teacher layers {self.layer_map}; tensors: {parts}" + (
            f" (random: {', '.join(_compact(rnd))})" if rnd else ""
        )


def _compact(names: list[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        short = n.replace("model.layers.", "L").replace(".weight", "")
        out.append(short)
    return out


def resolve_config(spec: StudentSpec, teacher_config: dict[str, Any]) -> dict[str, Any]:
    """The student's config.json (Qwen2 when no MoE layer, else Qwen2-MoE) with explicit layer_types."""
    t = teacher_config
    t_rows = int(t["vocab_size"])
    if spec.vocab_size is not None and spec.vocab_size != t_rows:
        raise UserError(
            f"student vocab_size {spec.vocab_size} contradicts the teacher's {t_rows} "
            "(a student must share the teacher's tokenizer and vocabulary)"
        )
    L = spec.layers
    if L < 1:
        raise UserError(f"student layers must be >= 1, got {L}")
    for name, idx in (("moe_layers", spec.moe_layers), ("window_layers", spec.window_layers)):
        bad = [i for i in idx if not 0 <= i < L]
        if bad:
            raise UserError(f"student {name} {bad} out of range for {L} layers")
    if spec.shared_gate not in SHARED_GATES:
        raise UserError(
            f"student shared_gate must be one of {', '.join(SHARED_GATES)}, got {spec.shared_gate!r}"
        )
    if spec.window_layers and not spec.window:
        raise UserError("student window_layers given without a window size")
    if spec.window is not None and spec.window < 1:
        raise UserError(f"student window must be >= 1, got {spec.window}")
    hidden = spec.hidden or int(t["hidden_size"])
    heads = spec.heads or int(t["num_attention_heads"])
    kv = spec.kv_heads or int(t.get("num_key_value_heads") or heads)
    if hidden % heads or heads % kv:
        raise UserError(f"student hidden {hidden}, heads {heads}, kv_heads {kv} do not divide")
    inter = spec.intermediate or int(t["intermediate_size"])
    layer_types = ["sliding_attention" if i in spec.window_layers else "full_attention" for i in range(L)]
    cfg: dict[str, Any] = {
        "vocab_size": t_rows,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": L,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "hidden_act": "silu",
        "max_position_embeddings": int(t.get("max_position_embeddings", 2048)),
        "rope_theta": float(
            t.get("rope_theta") or (t.get("rope_parameters") or {}).get("rope_theta", 10000.0)
        ),
        "rms_norm_eps": float(t.get("rms_norm_eps", 1e-6)),
        "tie_word_embeddings": bool(t.get("tie_word_embeddings", False)),
        "use_sliding_window": bool(spec.window_layers),
        "sliding_window": spec.window if spec.window_layers else None,
        "max_window_layers": L,
        "layer_types": layer_types,
        "bos_token_id": t.get("bos_token_id"),
        "eos_token_id": t.get("eos_token_id"),
        "initializer_range": 0.02,
    }
    if not spec.moe_layers:
        return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", **cfg}
    if not 1 <= spec.top_k <= spec.num_experts:
        raise UserError(f"student top_k {spec.top_k} must be in 1..num_experts ({spec.num_experts})")
    t_inter = int(t["intermediate_size"])
    return {
        "architectures": ["Qwen2MoeForCausalLM"],
        "model_type": "qwen2_moe",
        **cfg,
        "num_experts": spec.num_experts,
        "num_experts_per_tok": spec.top_k,
        "moe_intermediate_size": spec.expert_intermediate or max(1, t_inter // spec.num_experts),
        "shared_expert_intermediate_size": spec.shared_intermediate or t_inter,
        "norm_topk_prob": spec.norm_topk_prob,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [i for i in range(L) if i not in spec.moe_layers],
        "output_router_logits": False,
        "qkv_bias": True,
    }


def layer_map(spec: StudentSpec, teacher_layers: int) -> list[int]:
    if spec.init_layers is not None:
        if len(spec.init_layers) != spec.layers or not all(0 <= i < teacher_layers for i in spec.init_layers):
            raise UserError(
                f"student init_layers {list(spec.init_layers)} must name {spec.layers} teacher layers in 0..{teacher_layers - 1}"
            )
        return list(spec.init_layers)
    if spec.layers == 1:
        return [teacher_layers - 1]
    # evenly spaced, first and last included (the embedding- and output-adjacent layers matter most)
    return [round(i * (teacher_layers - 1) / (spec.layers - 1)) for i in range(spec.layers)]


def build_student(spec: StudentSpec, teacher, seed: int = 0):
    """(student model, InitReport): a transformers model initialized from `teacher` where shapes allow."""
    from ..model.families import FAMILIES, transformers_class

    t_cfg = teacher.config.to_dict()
    cfg = resolve_config(spec, t_cfg)
    fam = FAMILIES[cfg["architectures"][0]]
    torch.manual_seed(seed)
    student = transformers_class(fam.model_class)(transformers_class(fam.config_class).from_dict(cfg))
    report = init_from_teacher(student, teacher, spec, seed)
    if spec.shared_gate == "constant":
        for name, p in student.named_parameters():
            if name.endswith("mlp.shared_expert_gate.weight"):
                with torch.no_grad():
                    p.zero_()
                p.requires_grad_(False)  # the trainer optimizes only parameters that require grad
                report.sources[name] = "zero (constant shared-expert gate, frozen)"
    return student, report


def _slice_rows(w: torch.Tensor, start: int, n: int) -> torch.Tensor:
    idx = (torch.arange(n) + start) % w.shape[0]
    return w[idx]


def init_from_teacher(student, teacher, spec: StudentSpec, seed: int = 0) -> InitReport:
    """Copy teacher tensors into the student where shapes allow; experts get slices of the teacher MLP."""
    t_sd = teacher.state_dict()
    t_layers = teacher.config.num_hidden_layers
    lmap = layer_map(spec, t_layers)
    report = InitReport(layer_map=lmap)
    g = torch.Generator().manual_seed(seed + 7)
    s_sd = student.state_dict()
    tied = bool(student.config.tie_word_embeddings)

    def put(name: str, value: torch.Tensor, how: str) -> None:
        s_sd[name].copy_(value.to(s_sd[name].dtype))
        report.sources[name] = how

    with torch.no_grad():
        for name, p in s_sd.items():
            if name == "lm_head.weight" and tied:
                continue
            src: str | None = None
            if name in ("model.embed_tokens.weight", "model.norm.weight"):
                src = name
            elif name == "lm_head.weight":
                src = (
                    name
                    if "lm_head.weight" in t_sd and not teacher.config.tie_word_embeddings
                    else "model.embed_tokens.weight"
                )
            elif name.startswith("model.layers."):
                i_s, part = name[len("model.layers.") :].split(".", 1)
                tl = f"model.layers.{lmap[int(i_s)]}."
                if part in ATTN_PARTS:
                    src = tl + part
                elif part.startswith("mlp.") and part.split(".")[1] in MLP_PARTS:
                    src = tl + part  # dense layer from dense layer
                elif part.startswith("mlp.shared_expert."):
                    src = tl + "mlp." + part[len("mlp.shared_expert.") :]
                elif part in ("mlp.experts.gate_up_proj", "mlp.experts.down_proj"):
                    if not _init_experts(name, part, p, t_sd, tl, put, g):
                        report.sources[name] = "random (teacher MLP shape does not fit)"
                    continue
            if src is None or src not in t_sd:
                report.sources[name] = "random"
                continue
            tv = t_sd[src]
            if tv.shape == p.shape:
                put(name, tv, f"copy {src}")
            elif name.endswith("down_proj.weight") and tv.shape[0] == p.shape[0] and tv.shape[1] > p.shape[1]:
                put(name, tv[:, : p.shape[1]], f"slice {src}")
            elif (
                name.endswith(("gate_proj.weight", "up_proj.weight"))
                and tv.shape[1] == p.shape[1]
                and tv.shape[0] > p.shape[0]
            ):
                put(name, tv[: p.shape[0]], f"slice {src}")
            else:
                report.sources[name] = f"random (teacher {src} is {tuple(tv.shape)})"
    return report


def _init_experts(name, part, p, t_sd, tl, put, g) -> bool:
    """Expert e takes intermediate channels [e*I_T/E, e*I_T/E + I_e) of the teacher MLP, plus 1% noise so
    experts that share channels still differ. Needs the teacher's hidden size; otherwise left random."""
    E = p.shape[0]
    tg, tu, td = (t_sd.get(f"{tl}mlp.{k}.weight") for k in MLP_PARTS)
    if tg is None:
        return False
    I_t = tg.shape[0]
    if part.endswith("gate_up_proj"):
        I_e = p.shape[1] // 2
        if tg.shape[1] != p.shape[2]:
            return False
        val = torch.stack(
            [
                torch.cat([_slice_rows(tg, e * I_t // E, I_e), _slice_rows(tu, e * I_t // E, I_e)])
                for e in range(E)
            ]
        )
    else:
        I_e = p.shape[2]
        if td.shape[0] != p.shape[1]:
            return False
        val = torch.stack([_slice_rows(td.T, e * I_t // E, I_e).T for e in range(E)])
    val = val + 0.01 * val.std() * torch.randn(val.shape, generator=g)
    put(name, val, f"slice {tl}mlp.*")
    return True
