"""What each llama.cpp encoding of a MoE hybrid stores, and reads per decode step, at Q4_0.

    python -m benchmarks.gguf_hybrid_sizes [--check FILE.gguf ...]

Counted from the model's spec (no checkpoint, no export), for every encoding class in
qwen2_edge/exporters/gguf/archs that has experts, with its blockers (empty = exact for a student with a
constant shared-expert gate; a learned gate blocks step35 and granite_swa). Bytes assume our Q4_0 export:
matrices 18 bytes per 32 weights, embedding and output tables Q8_0 (34 per 32), vectors and routers f32;
FFN widths padded to 32. A decode step reads every tensor except the routed experts (top_k of E) and the
input embedding (one row). `--check` compares the count with real GGUF files of the same model (tensor
elements; an exported file's encoding is read from its general.architecture).

Models: the demo student (DEFAULT_STUDENT on the built-in teacher) and benchmarks/checkpoints.py's
Qwen2-0.5B-wide MoE hybrid, as configured (norm_topk_prob=false), with norm_topk_prob=true (the
variant granite_swa could hold before step35), and without windows (which qwen2moe holds, also with a
learned gate).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from qwen2_edge.exporters.gguf.archs import GraniteSwaMoe, Qwen2Moe, Step35
from qwen2_edge.exporters.gguf.archs.base import Encoding, expert_width
from qwen2_edge.model.spec import DenseFFN, ModelSpec, MoEFFN, spec_from_dict

Q4, Q8, F32 = 18 / 32, 34 / 32, 4.0
ENCODINGS = (Step35, Qwen2Moe, GraniteSwaMoe)


@dataclass
class Count:
    matrix: int = 0  # Q4_0 weights
    table: int = 0  # Q8_0 (embedding, output)
    vector: int = 0  # f32 (norms, biases, routers, sinks, gates)
    read_matrix: float = 0.0
    read_table: float = 0.0
    read_vector: int = 0

    def add(self, kind: str, n: int, read: float = 1.0) -> None:
        setattr(self, kind, getattr(self, kind) + n)
        name = f"read_{kind}"
        setattr(self, name, getattr(self, name) + n * read)

    @property
    def weights(self) -> int:
        return self.matrix + self.table + self.vector

    @property
    def stored_mb(self) -> float:
        return (self.matrix * Q4 + self.table * Q8 + self.vector * F32) / 1e6

    @property
    def read_mb(self) -> float:
        return (self.read_matrix * Q4 + self.read_table * Q8 + self.read_vector * F32) / 1e6


def count(cls: type[Encoding], spec: ModelSpec, m: int = 32) -> Count:
    """Elements of the file `cls` writes for `spec` (mirrors the classes' tensors(); --check verifies)."""
    enc = cls(spec, ffn_multiple=m)
    H, V = spec.hidden_size, spec.vocab_size
    f = next(layer.ffn for layer in spec.layers if isinstance(layer.ffn, MoEFFN))
    E, k = f.num_experts, f.top_k
    c = Count()
    c.add("table", V * H, read=1 / V)  # token_embd: one row
    c.add("vector", H)  # output_norm
    if not spec.tie_word_embeddings or cls.tied_output_required:
        c.add("table", V * H)
    else:
        c.read_table += V * H - 1 * H  # token_embd doubles as the output: read in full
    q, kv = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
    for layer in spec.layers:
        c.add("matrix", H * (q + 2 * kv) + q * H)
        c.add("vector", 2 * H + (q + 2 * kv if spec.qkv_bias else 0))
        if cls is GraniteSwaMoe:
            c.add("vector", spec.num_heads)  # attention sinks
        if cls is Step35 and isinstance(layer.ffn, DenseFFN):
            c.add("matrix", 3 * H * enc.feed_forward_length())
            continue
        width = enc.width(f.expert_intermediate if cls is Step35 else expert_width(spec))
        shared = enc.width(f.shared_intermediate) if f.shared_intermediate else (1 if cls is Step35 else 0)
        c.add("vector", E * H)  # router
        c.add("matrix", 3 * E * H * width, read=k / E)
        # a zero shared expert (dense layer's, or step35's 1-wide stand-in) is written in f32
        zero = isinstance(layer.ffn, DenseFFN) or not f.shared_intermediate
        c.add("vector" if zero else "matrix", 3 * H * shared)
        if cls is Qwen2Moe:
            c.add("vector", H)  # shared_expert_gate
    return c


def demo_spec() -> ModelSpec:
    import qwen2_edge
    from qwen2_edge.distill.student import DEFAULT_STUDENT, resolve_config

    teacher = Path(qwen2_edge.__file__).parent / "assets" / "teacher" / "config.json"
    return spec_from_dict(resolve_config(DEFAULT_STUDENT, json.loads(teacher.read_text())))


def bench_spec(**config) -> ModelSpec:
    from qwen2_edge.testing.fixtures import FixtureSpec, config_dict

    from .checkpoints import BENCH_SPECS

    s = BENCH_SPECS["moe"]
    raw = config_dict(FixtureSpec(**{**s.__dict__, "config": {**s.config, **config}}))
    return spec_from_dict(raw)


def check(path: Path, spec: ModelSpec) -> str:
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    arch = r.fields["general.architecture"].contents()
    cls = {"step35": Step35, "qwen2moe": Qwen2Moe, "granite_swa": GraniteSwaMoe}[arch]
    got = sum(int(t.n_elements) for t in r.tensors)
    want = count(cls, spec).weights
    return f"{path}: {arch}, {got:,} elements in the file, {want:,} counted ({'equal' if got == want else 'DIFFER'})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", nargs="*", default=[], help="GGUF files of the demo student to compare with")
    args = ap.parse_args()
    models = {
        "demo student": demo_spec(),
        "bench moe (norm_topk_prob=false)": bench_spec(),
        "bench moe, norm_topk_prob=true": bench_spec(norm_topk_prob=True),
        # full attention: qwen2moe holds it even with a learned shared-expert gate (duplicating layer 0)
        "bench moe, no windows": bench_spec(use_sliding_window=False),
    }
    print("| model | encoding | exact for a constant shared-expert gate? | weights stored (M) | Q4_0 file MB "
          "| MB read per decode step |")
    print("|---|---|---|---|---|---|")
    for label, spec in models.items():
        for cls in ENCODINGS:
            why = cls.blockers(spec, [])
            c = count(cls, spec)
            arch = "granite_swa (experts)" if cls is GraniteSwaMoe else cls.arch
            print(f"| {label} | {arch} | {'yes' if not why else 'no: ' + '; '.join(why)} | "
                  f"{c.weights / 1e6:.2f} | {c.stored_mb:.2f} | {c.read_mb:.2f} |")
    for path in args.check:
        print(check(Path(path), models["demo student"]))


if __name__ == "__main__":
    main()
