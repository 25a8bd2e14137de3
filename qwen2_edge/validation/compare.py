"""Run the float reference and each artifact on the same token chunks; collect per-artifact statistics.

`check_artifacts(model, artifacts, opts)` is the library call behind `qwen2-edge check` (and the
pipeline's validation step). It is runtime-agnostic: artifacts are opened through the runtime registry
and only the `Session` protocol is used on them. The reference is transformers in float32.

Two rows per artifact. The gated row runs it with an f32 KV cache, so it measures the weights (the export)
alone. The deployed row runs it at the KV cache it ships with (the runtime's default, or the one asked
for): each scored token is decoded one at a time from the cache, as generation does, so a quantized cache
shows in every score (a prefill may compute attention before the cache is written). Where the deployed
cache is f32 the gated row already describes it (its decode gate bounds decode against prefill).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UnsupportedError, UserError
from ..runtimes.base import Session
from .expert_load import ExpertLoad
from .gates import DEFAULT_LIMITS, GATES, evaluate
from .summary import perplexity, summarize
from .token_stats import TokenStats, compare_logits, log_softmax64

DEFAULT_CTX = 512
DEFAULT_CHUNKS = 8


@dataclass
class CheckOptions:
    text: str | None = None  # None: the built-in held-out corpus
    text_source: str = "builtin:heldout"
    ctx: int | None = None  # None: default_ctx(spec)
    chunks: int = DEFAULT_CHUNKS
    limits: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    greedy_prompts: int = 4
    greedy_prompt_tokens: int = 16
    greedy_new_tokens: int = 32
    threads: int | None = None
    progress: bool | None = True  # None: only when stderr is a terminal
    kv_cache: str | None = None  # the deployed KV cache; None: each artifact's runtime default
    # Measure the deployed row: None where the deployed cache is not f32 (an f32 one is the gated row),
    # True always (decoding token by token at f32 too), False never.
    deployed: bool | None = None


# Gates read on the deployed row (the decode gate compares an artifact with itself: gated row only).
DEPLOYED_GATES = tuple(g for g in GATES if g.key != "decode_kld_max")


@dataclass
class DeployedResult:
    """An artifact at its deployed KV cache: the scored tokens decoded one at a time from the cache."""

    kv_cache: str
    measured: bool  # False: the cache is the gated row's (f32), whose numbers are repeated here
    summary: dict[str, Any]
    greedy_first_diff: list[int | None]
    over_limits: list[str]  # gates whose limit this row exceeds (reported, not gated)

    @property
    def greedy_match(self) -> float:
        d = self.greedy_first_diff
        return sum(x is None for x in d) / len(d) if d else math.nan

    def to_json(self) -> dict[str, Any]:
        return {
            "kv_cache": self.kv_cache,
            "measured": self.measured,
            "method": "token-by-token decode" if self.measured else "same as the f32-cache row",
            **{k: v for k, v in self.summary.items() if not k.startswith("decode_")},
            "greedy_match": self.greedy_match,
            "greedy_first_diff": self.greedy_first_diff,
            "over_limits": self.over_limits,
        }


@dataclass
class ArtifactResult:
    path: str
    format: str
    runtime: str
    quant: str
    summary: dict[str, Any]
    gates: dict[str, bool]
    greedy_first_diff: list[int | None]  # per prompt: first differing generated position, None = identical
    tokenizer_match: bool
    vocab_rows: int
    seconds: float
    kld_by_position: np.ndarray  # mean KLD at each position of a chunk (averaged over chunks)
    kv_cache: str = "f32"  # the gated row's cache
    deployed: DeployedResult | None = None

    @property
    def passed(self) -> bool:
        return all(self.gates.values())

    @property
    def failed(self) -> list[str]:
        return [k for k, ok in self.gates.items() if not ok]

    @property
    def greedy_match(self) -> float:
        d = self.greedy_first_diff
        return sum(x is None for x in d) / len(d) if d else math.nan

    def to_json(self) -> dict[str, Any]:
        return _clean(
            {
                "path": self.path,
                "format": self.format,
                "runtime": self.runtime,
                "quant": self.quant,
                "kv_cache": self.kv_cache,
                **self.summary,
                "greedy_match": self.greedy_match,
                "greedy_first_diff": self.greedy_first_diff,
                "tokenizer_match": self.tokenizer_match,
                "vocab_rows": self.vocab_rows,
                "seconds": round(self.seconds, 3),
                "gates": self.gates,
                "failed": self.failed,
                "passed": self.passed,
                "deployed": self.deployed.to_json() if self.deployed else None,
            }
        )


@dataclass
class CheckResult:
    model: str
    text_source: str
    text_tokens: int
    ctx: int
    chunks: int
    score_from: int  # first scored position of each chunk (llama.cpp: ctx // 2)
    limits: dict[str, float]
    reference: dict[str, Any]
    artifacts: list[ArtifactResult]
    expert_load: ExpertLoad | None
    windows: tuple[int | None, ...]
    notes: list[str] = field(default_factory=list)
    kv_cache: str | None = None  # the deployed KV cache asked for; None: each runtime's default

    @property
    def passed(self) -> bool:
        return all(a.passed for a in self.artifacts)

    def to_json(self) -> dict[str, Any]:
        return _clean(
            {
                "model": self.model,
                "text": {"source": self.text_source, "tokens": self.text_tokens},
                "ctx": self.ctx,
                "chunks": self.chunks,
                "score_from": self.score_from,
                "sliding_windows": sorted({w for w in self.windows if w is not None}),
                "limits": self.limits,
                "gated_kv_cache": "f32",
                "deployed_kv_cache": self.kv_cache or "runtime default",
                "passed": self.passed,
                "reference": self.reference,
                "artifacts": [a.to_json() for a in self.artifacts],
                "expert_load": self.expert_load.to_json() if self.expert_load else None,
                "notes": self.notes,
            }
        )


def _clean(x: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python, floats rounded to 8 significant digits."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return None if not math.isfinite(x) else float(f"{x:.8g}")
    return x


def default_ctx(spec) -> int:
    """512 tokens, or twice the largest sliding window so every scored token is past the window."""
    ctx = DEFAULT_CTX
    if spec.has_sliding:
        ctx = max(ctx, 2 * spec.max_window)
    return min(ctx, spec.max_position_embeddings)


def token_chunks(ids: list[int], ctx: int, n: int) -> list[list[int]]:
    """The first n non-overlapping chunks of ctx tokens (fewer if the text is short)."""
    return [ids[i * ctx : (i + 1) * ctx] for i in range(min(n, len(ids) // ctx))]


def greedy_prompts(ids: list[int], n: int, length: int) -> list[list[int]]:
    """n prompts of `length` tokens spread evenly over the text."""
    if len(ids) < length or n <= 0:
        return []
    starts = np.linspace(0, len(ids) - length, n, dtype=np.int64)
    return [ids[s : s + length] for s in starts]


def first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def decode_consistency(session: Session, chunk: list[int], n_decode: int) -> tuple[float, float]:
    """The artifact's KV-cache decode path against its own prefill on the last n_decode tokens of a chunk.

    Independent of quantization (both paths use the same weights), so any difference beyond kernel
    rounding is a cache bug: wrong positions, a sliding window applied differently while decoding, a
    stale cache. Returns (max KL divergence, max |dlogit|) between the two paths.
    """
    prefill = session.logits(chunk)[-n_decode:]
    session.reset()
    session.append(chunk[:-n_decode])
    steps = np.concatenate([session.append([t]) for t in chunk[-n_decode:]])
    session.reset()
    st = compare_logits(prefill, steps, np.zeros(n_decode, dtype=np.int64))
    return float(st.kld.max()), float(st.max_dlogit.max())


@contextlib.contextmanager
def _runtime_errors(session: Session) -> Iterator[None]:
    """A runtime refusing the work (e.g. a chunk longer than its context) is bad input, not a crash."""
    try:
        yield
    except ValueError as e:
        raise UserError(
            f"{session.runtime} cannot run this check ({e}); try a smaller --ctx", session.path
        ) from None


def _reference_forward(ref, ids: list[int], want_router: bool) -> tuple[np.ndarray, list[np.ndarray]]:
    """Reference logits for a chunk, plus the router logits of its MoE layers (one forward pass)."""
    if not want_router:
        return ref.logits(ids), []
    import torch

    with torch.inference_mode():
        out = ref.model(input_ids=torch.tensor([ids]), use_cache=False, output_router_logits=True)
    routers = [r.reshape(-1, r.shape[-1]).float().numpy() for r in out.router_logits]
    return out.logits[0].float().numpy(), routers


def decoded_logits(session: Session, chunk: list[int], score_from: int) -> np.ndarray:
    """Logits at positions score_from .. len(chunk) - 2, each from a one-token decode step after the
    positions before it were cached (the first score_from tokens are one prefill)."""
    session.reset()
    session.append(chunk[:score_from])
    steps = [session.append([t]) for t in chunk[score_from:-1]]
    session.reset()
    return np.concatenate(steps)


@dataclass
class _Candidate:
    """One artifact's sessions: the gated one (f32 cache) and, when measured, one at its deployed cache."""

    item: str | Path | Session
    session: Session
    deployed_kv: str
    deployed: Session | None = None
    note: str | None = None

    def close(self) -> None:
        if not isinstance(self.item, Session):
            self.session.close()
        if self.deployed is not None:
            self.deployed.close()


def _session_ctx(opts: CheckOptions, ctx: int, spec) -> int:
    """Positions a check session must hold: a chunk, or a greedy prompt and its generation (not the model's
    limit: llama.cpp allocates its cache up front)."""
    return min(max(ctx, opts.greedy_prompt_tokens + opts.greedy_new_tokens) + 8, spec.max_position_embeddings)


def _kv_plan(artifacts: list[str | Path | Session], opts: CheckOptions) -> list[str | Path | Session]:
    """A bad path, or a cache type an artifact's runtime lacks, is refused here from the runtime tables
    before anything is loaded."""
    from ..runtimes.registry import resolve_kv_cache

    for item in artifacts:
        if not isinstance(item, Session):
            resolve_kv_cache(item, "f32")
            resolve_kv_cache(item, opts.kv_cache)
    return list(artifacts)


def _open_candidate(item: str | Path | Session, opts: CheckOptions, n_ctx: int) -> _Candidate:
    """The gated (f32-cache) session and, where the deployed cache differs (or opts.deployed forces it),
    a second one at the deployed cache. A runtime's default can depend on the artifact (an ONNX graph is
    built with its cache type), so without --kv-cache the default session is opened and asked."""
    from ..runtimes.options import RuntimeOptions
    from ..runtimes.registry import open_session

    if isinstance(item, Session):  # given as is: its own cache, no deployed twin
        return _Candidate(item, item, item.kv_cache)

    def session(kv: str | None) -> Session:
        return open_session(item, options=RuntimeOptions(opts.threads, kv, n_ctx))

    first = session(opts.kv_cache)  # the deployed setting
    deployed = first.kv_cache
    if deployed == "f32":
        c = _Candidate(item, first, deployed)
        if opts.deployed:
            try:
                c.deployed = session(opts.kv_cache)
            except BaseException:
                first.close()
                raise
        return c
    c = _Candidate(item, first, deployed, deployed=first)
    try:
        c.session = session("f32")
    except UnsupportedError as e:
        # The artifact holds its own cache type (an ONNX graph exported with --kv-cache): no f32 run exists,
        # so its one row, gated, is at that cache.
        c.deployed, c.note = None, f"{e}; its gated row is at its own {deployed} KV cache"
        return c
    except BaseException:
        first.close()
        raise
    if opts.deployed is False:
        first.close()
        c.deployed = None
    return c


def _open_candidates(plan: list[str | Path | Session], opts: CheckOptions, n_ctx: int) -> list[_Candidate]:
    out: list[_Candidate] = []
    try:
        for item in plan:
            out.append(_open_candidate(item, opts, n_ctx))
    except BaseException:
        for c in out:
            c.close()
        raise
    return out


def check_artifacts(
    model: str | Path | Session,
    artifacts: list[str | Path | Session],
    opts: CheckOptions | None = None,
) -> CheckResult:
    """Compare every artifact with the float reference of `model` on the same held-out token chunks."""
    from ..runtimes.reference import ReferenceSession

    opts = opts or CheckOptions()
    if not artifacts:
        raise UserError("no artifacts to check")
    unknown = set(opts.limits) - {g.name for g in GATES}
    if unknown:
        raise UserError(f"unknown gate(s) {', '.join(sorted(unknown))}")
    # Open everything first so a bad path or cache type fails before minutes of computation.
    plan = _kv_plan(artifacts, opts)
    ref = model if isinstance(model, Session) else ReferenceSession(model, threads=opts.threads)
    if not isinstance(ref, ReferenceSession):
        raise UserError("the reference must be a Hugging Face checkpoint (transformers, float32)", ref.path)
    ctx = _check_ctx(ref.spec, opts)
    candidates = _open_candidates(plan, opts, _session_ctx(opts, ctx, ref.spec))
    try:
        return _run(ref, candidates, opts, ctx)
    finally:
        for c in candidates:
            c.close()


def _deployed_result(
    c: _Candidate,
    chunks: list[TokenStats],
    gated: dict[str, Any],
    gated_diffs: list[int | None],
    prompts: list[list[int]],
    ref_gen: list[list[int]],
    opts: CheckOptions,
) -> DeployedResult:
    """The deployed row: measured from the deployed session's decoded chunks and greedy generations, or the
    gated row's numbers where no deployed session was opened (its cache is the gated one)."""
    if c.deployed is None:
        return DeployedResult(c.deployed_kv, False, dict(gated), list(gated_diffs), [])
    summary = summarize(TokenStats.concat(chunks))
    with _runtime_errors(c.deployed):
        diffs = [
            first_difference(g, c.deployed.greedy(p, opts.greedy_new_tokens))
            for p, g in zip(prompts, ref_gen, strict=True)
        ]
    over = []
    for g in DEPLOYED_GATES:
        limit = opts.limits.get(g.name, g.default)
        if not g.holds(summary, limit):
            over.append(f"{g.key} {summary.get(g.key):.4g} beyond {g.name} {limit:g}")
    return DeployedResult(c.deployed_kv, True, summary, diffs, over)


def _check_ctx(spec, opts: CheckOptions) -> int:
    ctx = opts.ctx or default_ctx(spec)
    if ctx < 4:
        raise UserError(f"--ctx {ctx} is too small (at least 4 tokens)")
    if ctx > spec.max_position_embeddings:
        raise UserError(
            f"--ctx {ctx} exceeds the model's max_position_embeddings {spec.max_position_embeddings}"
        )
    return ctx


def _run(ref, candidates: list[_Candidate], opts: CheckOptions, ctx: int) -> CheckResult:
    spec = ref.spec
    notes: list[str] = [c.note for c in candidates if c.note]
    sessions = [c.session for c in candidates]
    if spec.has_sliding and ctx <= spec.max_window:
        notes.append(f"ctx {ctx} <= sliding window {spec.max_window}: windowed attention is not exercised")
    if opts.text is None:
        from ..data.corpus import heldout_text

        text = heldout_text()
    else:
        text = opts.text
    ids = ref.encode(text)
    chunks = token_chunks(ids, ctx, opts.chunks)
    if not chunks:
        raise UserError(
            f"the text has {len(ids)} tokens, fewer than one chunk of --ctx {ctx}", opts.text_source
        )
    if len(chunks) < opts.chunks:
        notes.append(f"text holds only {len(chunks)} chunk(s) of {ctx} tokens ({opts.chunks} requested)")
    score_from = ctx // 2  # llama.cpp: every scored token has at least ctx/2 tokens of context

    sample = text[:4000]
    ref_sample = ref.encode(sample)
    tok_match = [s.encode(sample) == ref_sample for s in sessions]

    expert_load = ExpertLoad.for_spec(spec)
    per_chunk: list[list[TokenStats]] = [[] for _ in sessions]
    deployed_chunks: list[list[TokenStats]] = [[] for _ in sessions]
    ref_nll: list[np.ndarray] = []
    widths = [0] * len(sessions)
    seconds = [0.0] * len(sessions)

    from tqdm import tqdm

    for chunk in tqdm(
        chunks,
        desc="check",
        unit="chunk",
        disable=None if opts.progress is None else not opts.progress,
        leave=False,
    ):
        ref_logits, routers = _reference_forward(ref, chunk, expert_load is not None)
        if expert_load is not None:
            expert_load.add(routers)
        targets = np.asarray(chunk[1:])
        for i, s in enumerate(sessions):
            t0 = time.perf_counter()
            with _runtime_errors(s):
                cand = s.logits(chunk)
            seconds[i] += time.perf_counter() - t0
            widths[i] = cand.shape[1]
            per_chunk[i].append(compare_logits(ref_logits[:-1], cand[:-1], targets))
            d = candidates[i].deployed
            if d is not None:
                t0 = time.perf_counter()
                with _runtime_errors(d):
                    dec = decoded_logits(d, chunk, score_from)
                seconds[i] += time.perf_counter() - t0
                deployed_chunks[i].append(
                    compare_logits(ref_logits[score_from:-1], dec, targets[score_from:])
                )
        lp = log_softmax64(ref_logits[score_from:-1])
        ref_nll.append(-lp[np.arange(len(lp)), targets[score_from:]])

    ref_ppl, ref_ppl_err = perplexity(np.concatenate(ref_nll))
    reference = {
        "path": str(ref.path),
        "format": ref.format,
        "runtime": ref.runtime,
        "ppl": ref_ppl,
        "ppl_err": ref_ppl_err,
        "tokens": int(sum(len(c) - 1 - score_from for c in chunks)),
    }

    prompts = greedy_prompts(ids, opts.greedy_prompts, opts.greedy_prompt_tokens)
    ref_gen = [ref.greedy(p, opts.greedy_new_tokens) for p in prompts]

    results = []
    for i, s in enumerate(sessions):
        stats = TokenStats.concat([c.select(slice(score_from, None)) for c in per_chunk[i]])
        summary = summarize(stats)
        t0 = time.perf_counter()
        with _runtime_errors(s):
            diffs = [
                first_difference(g, s.greedy(p, opts.greedy_new_tokens))
                for p, g in zip(prompts, ref_gen, strict=True)
            ]
            dec_kld, dec_dlogit = decode_consistency(s, chunks[0], min(16, ctx - score_from))
        summary["decode_kld_max"], summary["decode_max_dlogit"] = dec_kld, dec_dlogit
        seconds[i] += time.perf_counter() - t0
        t0 = time.perf_counter()
        deployed = _deployed_result(candidates[i], deployed_chunks[i], summary, diffs, prompts, ref_gen, opts)
        seconds[i] += time.perf_counter() - t0
        if deployed.over_limits:
            notes.append(
                f"{s.path}: at the deployed {deployed.kv_cache} KV cache, "
                + ", ".join(deployed.over_limits)
                + " (reported, not gated: the gates read the f32-cache row)"
            )
        if widths[i] != ref_logits.shape[1]:
            notes.append(
                f"{s.path}: {widths[i]} logit rows vs the reference's {ref_logits.shape[1]}; "
                f"compared over the first {min(widths[i], ref_logits.shape[1])}"
            )
        results.append(
            ArtifactResult(
                path=str(s.path),
                format=s.format,
                runtime=s.runtime,
                quant=getattr(s, "quant", "f32"),
                summary=summary,
                gates=evaluate(summary, opts.limits),
                greedy_first_diff=diffs,
                tokenizer_match=tok_match[i],
                vocab_rows=widths[i],
                seconds=seconds[i],
                kld_by_position=np.mean([c.kld for c in per_chunk[i]], axis=0),
                kv_cache=getattr(s, "kv_cache", "f32"),
                deployed=deployed,
            )
        )
    return CheckResult(
        model=str(ref.path),
        text_source=opts.text_source,
        text_tokens=len(ids),
        ctx=ctx,
        chunks=len(chunks),
        score_from=score_from,
        limits={g.name: opts.limits.get(g.name, g.default) for g in GATES},
        reference=reference,
        artifacts=results,
        expert_load=expert_load,
        windows=spec.windows,
        notes=notes,
        kv_cache=opts.kv_cache,
    )
