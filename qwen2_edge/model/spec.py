"""ModelSpec: a frozen, normalized view of a Qwen2 / Qwen2-MoE config.json.

Per-layer attention and FFN kinds are resolved by the installed transformers' own config class
(its `layer_types`, `use_sliding_window` / `max_window_layers`, `mlp_only_layers`,
`decoder_sparse_step` semantics), so the spec always agrees with the float reference.
A saved `layer_types` is taken as written.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, UnsupportedError, read_json_object
from .families import FAMILIES, Family, transformers_class


@dataclass(frozen=True)
class Attention:
    """window=None: full causal attention. window=w: query i sees keys j with i-w < j <= i (w keys, itself included)."""

    window: int | None = None

    @property
    def kind(self) -> str:
        return "full" if self.window is None else "sliding"


@dataclass(frozen=True)
class DenseFFN:
    intermediate: int

    kind = "dense"


@dataclass(frozen=True)
class MoEFFN:
    """Routed experts (softmax router, top-k) plus an optional shared expert scaled by sigmoid(gate(x))."""

    num_experts: int
    top_k: int
    norm_topk_prob: bool
    expert_intermediate: int
    shared_intermediate: int  # 0: no shared expert

    kind = "moe"


@dataclass(frozen=True)
class LayerSpec:
    index: int
    attention: Attention
    ffn: DenseFFN | MoEFFN


@dataclass(frozen=True)
class ModelSpec:
    family: str
    architecture: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rope_scaling: dict[str, Any] | None  # transformers' rope_parameters when rope_type != "default"
    rms_norm_eps: float
    tie_word_embeddings: bool
    qkv_bias: bool
    max_position_embeddings: int
    layers: tuple[LayerSpec, ...]
    bos_token_id: int | None = None
    eos_token_id: tuple[int, ...] = ()
    pad_token_id: int | None = None
    config: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_moe(self) -> bool:
        return any(isinstance(layer.ffn, MoEFFN) for layer in self.layers)

    @property
    def windows(self) -> tuple[int | None, ...]:
        return tuple(layer.attention.window for layer in self.layers)

    @property
    def has_sliding(self) -> bool:
        return any(w is not None for w in self.windows)

    @property
    def max_window(self) -> int | None:
        ws = [w for w in self.windows if w is not None]
        return max(ws) if ws else None

    @property
    def family_row(self) -> Family:
        return FAMILIES[self.architecture]

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec as JSON (without the raw config): what an exported artifact records, so its
        runtime reads the layer plan without rebuilding it through transformers (which costs ~250 MB)."""
        out = {k: getattr(self, k) for k in _SCALAR_FIELDS}
        out["eos_token_id"] = list(self.eos_token_id)
        out["layers"] = [
            {"window": layer.attention.window, "ffn": {"kind": layer.ffn.kind, **asdict(layer.ffn)}}
            for layer in self.layers
        ]
        return out

    @staticmethod
    def from_dict(data: dict[str, Any], config: dict[str, Any] | None = None) -> ModelSpec:
        """Inverse of to_dict; a malformed record is a ValueError (the caller names the file)."""
        try:
            layers = []
            for i, d in enumerate(data["layers"]):
                ffn = dict(d["ffn"])
                kind = ffn.pop("kind")
                layers.append(LayerSpec(i, Attention(d["window"]), (DenseFFN if kind == "dense" else MoEFFN)(**ffn)))
            scalars = {k: data[k] for k in _SCALAR_FIELDS}
            return ModelSpec(
                **scalars,
                eos_token_id=tuple(int(x) for x in data["eos_token_id"]),
                layers=tuple(layers),
                config=dict(config or {}),
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"malformed model spec record ({e})") from None

    def hf_config(self):  # -> transformers.PretrainedConfig
        """The transformers config object for this spec (what the reference model is built from)."""
        return _build_hf_config(self.family_row, self.config, Path("config.json"))


_SCALAR_FIELDS = (
    "family", "architecture", "vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
    "rope_theta", "rope_scaling", "rms_norm_eps", "tie_word_embeddings", "qkv_bias", "max_position_embeddings",
    "bos_token_id", "pad_token_id",
)  # fmt: skip


def read_spec(config_path: str | Path) -> ModelSpec:
    """Parse config.json into a ModelSpec; every problem is a one-line CheckpointError naming the file."""
    path = Path(config_path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise CheckpointError("no config.json (not a Hugging Face checkpoint directory)", path.parent)
    return spec_from_dict(read_json_object(path, "config.json", CheckpointError), path)


def spec_from_dict(raw: dict[str, Any], path: Path = Path("config.json")) -> ModelSpec:
    archs = raw.get("architectures")
    if not archs or not isinstance(archs, list):
        raise CheckpointError("missing 'architectures'", path)
    if not isinstance(archs[0], str):
        raise CheckpointError(f"'architectures' must be a list of class names, got {archs!r}"[:200], path)
    family = FAMILIES.get(archs[0])
    if family is None:
        known = ", ".join(FAMILIES)
        raise UnsupportedError(f"unsupported architecture {archs[0]!r} (supported: {known})", path)
    missing = [k for k in family.required if k not in raw]
    if missing:
        raise CheckpointError(f"missing config key(s) {', '.join(missing)} for {family.architecture}", path)
    cfg = _build_hf_config(family, raw, path)

    def positive(name: str, value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise CheckpointError(f"{name} must be a positive integer, got {value!r}", path)
        return value

    hidden = positive("hidden_size", cfg.hidden_size)
    n_layers = positive("num_hidden_layers", cfg.num_hidden_layers)
    n_heads = positive("num_attention_heads", cfg.num_attention_heads)
    n_kv = positive("num_key_value_heads", cfg.num_key_value_heads or n_heads)
    head_dim = getattr(cfg, "head_dim", None) or hidden // n_heads
    positive("head_dim", head_dim)
    if n_heads % n_kv:
        raise CheckpointError(
            f"num_attention_heads {n_heads} is not a multiple of num_key_value_heads {n_kv}", path
        )
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise UnsupportedError(f"hidden_act {cfg.hidden_act!r} (only silu is supported)", path)

    rope = dict(cfg.rope_parameters or {})
    rope_theta = float(rope.pop("rope_theta", 10000.0))
    rope_scaling = rope if rope.get("rope_type", "default") != "default" else None

    layer_types = list(cfg.layer_types)
    if len(layer_types) != n_layers:
        raise CheckpointError(f"layer_types has {len(layer_types)} entries for {n_layers} layers", path)
    window = cfg.sliding_window or None
    layers = []
    for i, lt in enumerate(layer_types):
        if lt == "sliding_attention":
            if not window:
                raise CheckpointError(
                    f"layer {i} is sliding_attention but no sliding window is enabled (use_sliding_window/sliding_window)",
                    path,
                )
            attn = Attention(int(window))
        elif lt == "full_attention":
            attn = Attention(None)
        else:
            raise UnsupportedError(f"layer {i} has layer type {lt!r}", path)
        layers.append(LayerSpec(i, attn, _ffn_for_layer(family, cfg, i, path)))

    eos = cfg.eos_token_id
    eos_ids = () if eos is None else tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)
    return ModelSpec(
        family=family.name,
        architecture=family.architecture,
        vocab_size=positive("vocab_size", cfg.vocab_size),
        hidden_size=hidden,
        num_layers=n_layers,
        num_heads=n_heads,
        num_kv_heads=n_kv,
        head_dim=int(head_dim),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        rms_norm_eps=float(cfg.rms_norm_eps),
        tie_word_embeddings=bool(cfg.tie_word_embeddings),
        qkv_bias=bool(getattr(cfg, "qkv_bias", True)),
        max_position_embeddings=int(cfg.max_position_embeddings),
        layers=tuple(layers),
        bos_token_id=cfg.bos_token_id,
        eos_token_id=eos_ids,
        pad_token_id=cfg.pad_token_id,
        config=dict(raw),
    )


def _build_hf_config(family: Family, raw: dict[str, Any], path: Path):
    cls = transformers_class(family.config_class)
    try:
        return cls.from_dict({k: v for k, v in raw.items() if k not in ("transformers_version",)})
    except Exception as e:  # transformers' strict dataclass validation: bad types/values
        msg = " ".join(str(e).split())
        raise CheckpointError(f"invalid config: {msg}", path) from None


def _ffn_for_layer(family: Family, cfg, i: int, path: Path) -> DenseFFN | MoEFFN:
    if family.name == "qwen2":
        return DenseFFN(int(cfg.intermediate_size))
    # Mirrors Qwen2MoeDecoderLayer: MoE unless listed in mlp_only_layers or off the sparse step.
    step = int(cfg.decoder_sparse_step or 1)
    if i in (cfg.mlp_only_layers or []) or cfg.num_experts <= 0 or (i + 1) % step != 0:
        return DenseFFN(int(cfg.intermediate_size))
    if not 0 < cfg.num_experts_per_tok <= cfg.num_experts:
        raise CheckpointError(
            f"num_experts_per_tok {cfg.num_experts_per_tok} must be in 1..num_experts ({cfg.num_experts})",
            path,
        )
    return MoEFFN(
        num_experts=int(cfg.num_experts),
        top_k=int(cfg.num_experts_per_tok),
        norm_topk_prob=bool(cfg.norm_topk_prob),
        expert_intermediate=int(cfg.moe_intermediate_size),
        shared_intermediate=int(cfg.shared_expert_intermediate_size or 0),
    )
