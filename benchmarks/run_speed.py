"""Side-by-side generation speed of artifacts through `qwen2-edge run`'s streaming path (one process).

    python -m benchmarks.run_speed MODEL_DIR ARTIFACT... [--prompt-tokens 128] [--new-tokens 64] [--threads 2]

Every runtime gets the same prompt ids (from the held-out corpus) and generates greedily with EOS ignored,
so all do the same work; the table gives TTFT, decode tokens/s and the ratio to the float reference.
Each is measured after one warm-up generation.
"""

from __future__ import annotations

import argparse

from qwen2_edge.data.corpus import heldout_text
from qwen2_edge.runtimes import open_session
from qwen2_edge.runtimes.streaming import stream_generate


def measure(path: str, prompt: list[int], new_tokens: int, threads: int | None) -> dict:
    with open_session(path, threads=threads) as s:
        stream_generate(s, prompt[:16], 4, stop_ids=())  # warm-up (allocation, kernels)
        _, st = stream_generate(s, prompt, new_tokens, stop_ids=())
        return {"path": path, "runtime": s.runtime, "quant": s.quant, "ttft": st.ttft_s, "tps": st.decode_tps}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("artifacts", nargs="*")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    with open_session(a.model) as ref:
        prompt = ref.encode(heldout_text()[:20000])[: a.prompt_tokens]
    rows = [measure(p, prompt, a.new_tokens, a.threads) for p in [a.model, *a.artifacts]]
    base = rows[0]
    print(f"prompt {len(prompt)} tokens, {a.new_tokens} new tokens, threads {a.threads or 'default'}")
    print(f"{'artifact':<48} {'runtime':<13} {'quant':<7} {'TTFT ms':>9} {'tok/s':>8} {'x ref':>6}")
    for r in rows:
        print(
            f"{r['path'][-48:]:<48} {r['runtime']:<13} {r['quant']:<7} {1000 * r['ttft']:>9.1f} "
            f"{r['tps']:>8.1f} {r['tps'] / base['tps'] if base['tps'] else 0:>6.2f}"
        )


if __name__ == "__main__":
    main()
