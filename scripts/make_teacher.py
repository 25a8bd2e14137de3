"""Train the built-in teacher (`builtin:teacher`) from scratch, deterministically, and write it into the package.

    PYTHONPATH=. python scripts/make_teacher.py            # ~15 min on 2 CPU cores
    PYTHONPATH=. python scripts/make_teacher.py --steps 20 --out /tmp/t   # smoke run

Data: the running interpreter's standard library source (`qwen2_edge.data.corpus`: fixed training
module list; held-out perplexity on the disjoint held-out list). Model: a 4-layer Qwen2ForCausalLM
(hidden 256, 4 heads / 2 KV heads, SwiGLU 688, tied embeddings) over a 4,000-token byte-level BPE trained
on the same text, with 4,096 embedding rows (rounded up beyond the tokenizer, as Qwen2 does). Trained with
the distiller's own loop (qwen2_edge.distill.trainer, alpha = 1: cross-entropy only). Weights are stored
in bf16 (as Qwen2 ships); the perplexity printed is that of the stored bf16 weights.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from qwen2_edge.data import corpus
from qwen2_edge.distill.config import TrainConfig
from qwen2_edge.distill.data import pack_texts
from qwen2_edge.distill.trainer import evaluate, train
from qwen2_edge.fsutil import atomic_dir
from qwen2_edge.model.builtin import BUILTINS
from qwen2_edge.model.tokenizer import save_tokenizer, special_ids, train_bpe

TOKENIZER_VOCAB = 4000
EMBED_ROWS = 4096
SEQ_LEN = 512
SEED = 1234


def model_config(eos: int, vocab_rows: int = EMBED_ROWS) -> dict:
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": vocab_rows,
        "hidden_size": 256,
        "intermediate_size": 688,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": 4,
        "initializer_range": 0.02,
        "attention_dropout": 0.0,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "torch_dtype": "bfloat16",
    }


def unigram_perplexity(train_ids: torch.Tensor, heldout_ids: torch.Tensor, vocab: int) -> float:
    """Perplexity of the add-one-smoothed unigram model of the training tokens on the held-out tokens."""
    counts = torch.bincount(train_ids.reshape(-1), minlength=vocab).double() + 1.0
    logp = (counts / counts.sum()).log()
    return math.exp(-float(logp[heldout_ids[:, 1:].reshape(-1)].mean()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=BUILTINS["teacher"])
    ap.add_argument("--steps", type=int, default=450)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--ckpt-dir", type=Path, default=None, help="trainer checkpoints every 100 steps here")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    from transformers import Qwen2Config, Qwen2ForCausalLM

    # One thread: on a shared 2-core machine, two OpenMP threads spin against each other and against
    # other processes (measured here: ~700 tok/s with 1 thread vs ~200-500 with 2); it is also
    # bit-reproducible, since reductions never split across threads.
    torch.set_num_threads(args.threads)
    t_start = time.time()
    train_docs, held_docs = corpus.train_texts(), corpus.heldout_texts()
    tok = train_bpe(train_docs, TOKENIZER_VOCAB)
    eos = special_ids(tok)["<|endoftext|>"]
    vocab = tok.get_vocab_size(with_added_tokens=True)

    def encode(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]

    data = pack_texts(train_docs, held_docs, encode, SEQ_LEN, eos)
    print(
        f"corpus: {len(train_docs)} training files, {data.train_tokens:,} tokens; {len(held_docs)} held-out "
        f"files, {data.heldout_tokens:,} tokens; tokenizer {vocab} entries, {EMBED_ROWS} embedding rows",
        flush=True,
    )
    cfg_dict = model_config(eos)
    torch.manual_seed(args.seed)
    model = Qwen2ForCausalLM(Qwen2Config.from_dict(cfg_dict))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params:,} parameters", flush=True)
    tcfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=max(1, args.steps // 20),
        min_lr_ratio=0.1,
        weight_decay=0.1,
        alpha=1.0,
        seed=args.seed,
        eval_every=0,
        ckpt_every=100 if args.ckpt_dir else 0,
        log_every=50,
    )
    res = train(model, data, tcfg, ckpt_dir=args.ckpt_dir, resume=args.resume, log=print)
    # Measure what ships: the bf16-rounded weights.
    model = model.to(torch.bfloat16).float()
    ev = evaluate(model, data.heldout, tcfg, step=res.steps)
    uni = unigram_perplexity(data.train, data.heldout, EMBED_ROWS)

    with atomic_dir(args.out, force=True) as tmp:
        model.to(torch.bfloat16).save_pretrained(tmp)
        (tmp / "config.json").write_text(json.dumps(cfg_dict, indent=2) + "\n")
        save_tokenizer(tok, tmp, model_max_length=cfg_dict["max_position_embeddings"])
        ids = special_ids(tok)
        gen = {
            "bos_token_id": eos,
            "eos_token_id": [eos, ids["<|im_end|>"]],
            "pad_token_id": eos,
            "do_sample": False,
        }
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        report = {
            "parameters": n_params,
            "train_tokens_per_epoch": data.train_tokens,
            "heldout_tokens": data.heldout_tokens,
            "tokens_seen": res.tokens,
            "steps": res.steps,
            "seq_len": SEQ_LEN,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "train_seconds": round(res.seconds, 1),
            "heldout_ppl": round(ev.ppl, 3),
            "unigram_heldout_ppl": round(uni, 3),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "threads": args.threads,
        }
        (tmp / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    # mkdtemp made the folder private; the installed package must be readable by every user
    args.out.chmod(0o755)
    for f in args.out.iterdir():
        f.chmod(0o644)
    size = sum(f.stat().st_size for f in args.out.iterdir())
    print(json.dumps(report, indent=2))
    print(
        f"wrote {args.out} ({size / 2**20:.1f} MiB) in {time.time() - t_start:.0f} s: held-out ppl "
        f"{ev.ppl:.2f} vs unigram {uni:.1f}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
