"""The `check --report` HTML: one self-contained file, plots as embedded PNGs (matplotlib, Agg backend)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from .compare import CheckResult

_KLD_FLOOR = 1e-16  # log-scale plots: exact zeros drawn at this floor (f32 artifacts sit near 1e-14)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _num(x: float) -> str:
    """Perplexities of broken or random models can reach 1e200: scientific notation beyond 1e5."""
    return f"{x:.4f}" if abs(x) < 1e5 else f"{x:.4e}"


def _label(path: str) -> str:
    return Path(path).name or path


def plot_kld_by_position(res: CheckResult) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.8))
    for a in res.artifacts:
        y = np.maximum(a.kld_by_position, _KLD_FLOOR)
        ax.plot(np.arange(len(y)), y, lw=1.2, label=f"{_label(a.path)} ({a.format} {a.quant})")
    ax.axvspan(0, res.score_from, color="0.9", zorder=0, label="not scored (context warm-up)")
    for w in sorted({w for w in res.windows if w is not None}):
        ax.axvline(w, color="k", ls=":", lw=1, label=f"sliding window {w}")
    ax.set_yscale("log")
    ax.set_xlabel("token position in chunk")
    ax.set_ylabel("mean KL divergence (nats)")
    ax.set_title(f"KL divergence from the reference along the context ({res.chunks} chunks)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _png(fig)


def plot_artifact_bars(res: CheckResult) -> str:
    import matplotlib.pyplot as plt

    labels = [_label(a.path) for a in res.artifacts]
    x = np.arange(len(labels))
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    panels = (
        ("mean KLD (nats)", "kld_mean", "kld_err", 1.0, "max_kld", True),
        ("delta PPL (%)", "delta_ppl_rel", None, 100.0, "max_dppl", False),
        ("top-1 agreement (%)", "top1_agreement", "top1_err", 100.0, "min_top1", False),
    )
    for ax, (title, key, err, scale, gate, log) in zip(axes, panels, strict=True):
        vals = np.array([np.nan_to_num(a.summary[key]) * scale for a in res.artifacts])
        errs = None if err is None else [np.nan_to_num(a.summary[err]) * scale for a in res.artifacts]
        colors = ["tab:red" if gate in a.failed else "tab:green" for a in res.artifacts]
        if log:
            vals = np.maximum(vals, _KLD_FLOOR)
            ax.set_yscale("log")
        ax.bar(x, vals, yerr=errs, color=colors, capsize=3)
        ax.axhline(res.limits[gate] * scale, color="k", ls="--", lw=1, label="gate")
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def plot_expert_load(res: CheckResult) -> str | None:
    load = res.expert_load
    if load is None:
        return None
    import matplotlib.pyplot as plt

    frac = load.fractions()
    n_layers, n_exp = frac.shape
    fig, ax = plt.subplots(figsize=(min(2 + 0.35 * n_exp, 14), 1.5 + 0.4 * n_layers))
    im = ax.imshow(frac, aspect="auto", cmap="viridis", interpolation="nearest", vmin=0)
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
    ax.set_yticks(range(n_layers), [str(i) for i in load.layers])
    if n_exp <= 32:
        ax.set_xticks(range(n_exp))
    imb = ", ".join(f"L{i}: {v:.2f}x" for i, v in zip(load.layers, load.imbalance(), strict=True))
    ax.set_title(
        f"share of routed tokens per expert ({load.tokens} tokens); busiest/uniform {imb}", fontsize=8
    )
    fig.colorbar(im, ax=ax, label="share of layer's selections")
    return _png(fig)


def _row(cells: list[str], bad: list[bool] | None = None, tag: str = "td") -> str:
    bad = bad or [False] * len(cells)
    return "<tr>" + "".join(
        f'<{tag}{" class=bad" if b else ""}>{html.escape(c)}</{tag}>' for c, b in zip(cells, bad, strict=True)
    ) + "</tr>"  # fmt: skip


def _stat_cells(s: dict) -> list[str]:
    """PPL through max |dlogit|: the columns a gated row and a deployed row share."""
    return [
        f"{_num(s['ppl'])} ± {_num(s['ppl_err'])}",
        f"{s['delta_ppl']:+.4g} ± {s['delta_ppl_err']:.3g} ({100 * s['delta_ppl_rel']:+.2f}%)",
        f"{s['kld_mean']:.4g} ± {s['kld_err']:.2g}", f"{s['kld_p99']:.4g}", f"{s['kld_p999']:.4g}",
        f"{s['kld_max']:.4g}", f"{100 * s['top1_agreement']:.2f} ± {100 * s['top1_err']:.2f}",
        f"{100 * s['rms_dp']:.4f}", f"{100 * s['mean_dp']:+.4f}", f"{s['max_dlogit']:.4g}",
    ]  # fmt: skip


def render_html(res: CheckResult) -> str:
    e = html.escape
    ref = res.reference
    head = ["artifact", "format", "runtime", "quant", "KV cache", "PPL", "dPPL", "mean KLD", "KLD p99", "KLD p99.9",
            "KLD max", "top-1 %", "RMS dp %", "mean dp %", "max |dlogit|", "decode/prefill KLD", "greedy match", "result"]  # fmt: skip
    rows = [_row(head, tag="th")]
    for a in res.artifacts:
        s, f = a.summary, set(a.failed)
        cells = [
            a.path, a.format, a.runtime, a.quant, a.kv_cache, *_stat_cells(s),
            f"{s['decode_kld_max']:.3g}", f"{100 * a.greedy_match:.0f}%", "PASS" if a.passed else "FAIL: " + ", ".join(a.failed),
        ]  # fmt: skip
        bad = [False] * len(cells)
        bad[6], bad[7], bad[11] = "max_dppl" in f, "max_kld" in f, "min_top1" in f
        bad[15], bad[17] = "max_decode_kld" in f, not a.passed
        rows.append(_row(cells, bad))
        d = a.deployed
        if d is not None and d.measured:  # the same artifact at the KV cache it ships with (not gated)
            over = ", ".join(d.over_limits)
            cells = [
                f"{a.path} (deployed)", a.format, a.runtime, a.quant, d.kv_cache, *_stat_cells(d.summary),
                "-", f"{100 * d.greedy_match:.0f}%", "not gated" + (f": {over}" if over else ""),
            ]  # fmt: skip
            rows.append(_row(cells))
    figs = [("KL divergence along the token position", plot_kld_by_position(res)),
            ("Per-artifact quality (red: gate failed)", plot_artifact_bars(res))]  # fmt: skip
    moe = plot_expert_load(res)
    if moe:
        figs.append(("MoE expert load (reference router on this text)", moe))
    fig_html = "\n".join(
        f'<h2>{e(t)}</h2>\n<img alt="{e(t)}" src="data:image/png;base64,{b64}">' for t, b64 in figs
    )
    notes = "".join(f"<li>{e(n)}</li>" for n in res.notes)
    limits = ", ".join(f"{k} = {v:g}" for k, v in res.limits.items())
    verdict = "PASS" if res.passed else "FAIL"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>qwen2-edge check: {verdict}</title>
<style>body{{font-family:sans-serif;margin:2em;}} table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}} th{{background:#eee}}
td:first-child{{text-align:left}} .bad{{background:#fbb;font-weight:bold}} img{{max-width:100%}}</style>
</head><body>
<h1>qwen2-edge check: {verdict}</h1>
<p>Reference <code>{e(ref["path"])}</code> ({e(ref["runtime"])}, float32): PPL {_num(ref["ppl"])} ± {_num(ref["ppl_err"])}
over {ref["tokens"]} scored tokens; text {e(res.text_source)} ({res.text_tokens} tokens), {res.chunks} chunks of
{res.ctx} tokens, positions from {res.score_from} scored. Gates: {e(limits)}, read on each artifact's f32-cache
row (the weights alone); a "deployed" row is the artifact at the KV cache it ships with, each scored token
decoded one at a time from that cache (reported, not gated).</p>
<table>{"".join(rows)}</table>
<ul>{notes}</ul>
{fig_html}
</body></html>
"""


def write_report(res: CheckResult, path: str | Path, force: bool = False) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot's first import in this process
    import warnings

    from ..fsutil import atomic_file

    with warnings.catch_warnings():
        # e.g. a log axis whose bars all sit at the floor: matplotlib widens the limits and says so
        warnings.simplefilter("ignore", UserWarning)
        text = render_html(res)
    with atomic_file(path, force=force) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
