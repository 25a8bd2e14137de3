"""The tokenizer as llama.cpp reads it: byte-level BPE ("gpt2" model, "qwen2" pre-tokenizer)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gguf import TokenType

from ...errors import CheckpointError, UnsupportedError
from ...model.checkpoint import Checkpoint
from ...model.tokenizer import QWEN2_SPLIT, TextTokenizer


@dataclass
class GGUFVocab:
    tokens: list[str]
    types: list[int]
    merges: list[str]
    special: dict[str, int]  # bos / eos / pad -> id
    chat_template: str | None
    n_placeholders: int  # embedding rows beyond the tokenizer, filled with [PAD{i}] tokens
    normalizer: str | None = None  # "NFC": llama.cpp does not normalize, so our runtime does it first


NORMALIZER_KEY = "qwen2_edge.tokenizer.normalizer"  # ignored by llama.cpp, read by runtimes/llamacpp.py


def build_vocab(ckpt: Checkpoint) -> GGUFVocab:
    """Token list sized to the embedding rows; rows beyond the tokenizer get `[PAD{i}]` placeholders of
    type UNUSED, as llama.cpp's own converter writes them."""
    tok = TextTokenizer(ckpt.path)
    path = ckpt.tokenizer_file
    raw = json.loads(path.read_text(encoding="utf-8"))
    model = raw.get("model", {})
    if model.get("type") != "BPE":
        raise UnsupportedError(
            f"tokenizer model {model.get('type')!r} (GGUF export needs byte-level BPE)", path
        )
    if _split_patterns(raw.get("pre_tokenizer")) != [QWEN2_SPLIT]:
        raise UnsupportedError(
            "the tokenizer's pre-tokenizer is not Qwen2's byte-level split, and llama.cpp's 'qwen2' "
            "pre-tokenizer would cut text differently",
            path,
        )
    norm = _normalizer(raw.get("normalizer"))
    if norm not in (None, "NFC"):
        raise UnsupportedError(f"tokenizer normalizer {norm!r} has no llama.cpp equivalent", path)
    rows = ckpt.spec.vocab_size
    vocab = tok.tok.get_vocab(with_added_tokens=True)
    if vocab and max(vocab.values()) >= rows:
        raise CheckpointError(
            f"tokenizer has ids up to {max(vocab.values())} but only {rows} embedding rows", path
        )
    added = {a["id"]: a for a in raw.get("added_tokens", [])}
    by_id = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(rows):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(TokenType.CONTROL if added[i].get("special") else TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    special: dict[str, int] = {}
    cfg: dict[str, Any] = tok.config
    for key in ("bos", "eos", "pad"):
        name = cfg.get(f"{key}_token")
        if isinstance(name, dict):
            name = name.get("content")
        if isinstance(name, str) and name in vocab:
            special[key] = vocab[name]
    if "bos" not in special and ckpt.spec.bos_token_id is not None:
        special["bos"] = int(ckpt.spec.bos_token_id)
    if "eos" not in special and ckpt.spec.eos_token_id:
        special["eos"] = int(ckpt.spec.eos_token_id[0])
    return GGUFVocab(tokens, types, merges, special, tok.chat_template, rows - len(by_id), norm)


def _normalizer(n: Any) -> str | None:
    if not isinstance(n, dict):
        return None
    if n.get("type") == "Sequence":
        kinds = [_normalizer(x) for x in n.get("normalizers", [])]
        kinds = [k for k in kinds if k]
        return kinds[0] if len(kinds) == 1 else ("+".join(kinds) or None)
    return n.get("type")


def _split_patterns(pre: Any) -> list[str]:
    """Regex patterns of the Split steps of a tokenizer.json pre_tokenizer (ByteLevel steps carry none)."""
    if not isinstance(pre, dict):
        return []
    if pre.get("type") == "Sequence":
        return [p for step in pre.get("pretokenizers", []) for p in _split_patterns(step)]
    if pre.get("type") == "Split":
        return [pre.get("pattern", {}).get("Regex", pre.get("pattern", {}).get("String", ""))]
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return ["<gpt2 regex>"]
    return []


def write_vocab(w, v: GGUFVocab) -> None:
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(v.tokens)
    w.add_token_types(v.types)
    w.add_token_merges(v.merges)
    if "bos" in v.special:
        w.add_bos_token_id(v.special["bos"])
    if "eos" in v.special:
        w.add_eos_token_id(v.special["eos"])
    if "pad" in v.special:
        w.add_pad_token_id(v.special["pad"])
    w.add_add_bos_token(False)  # Qwen2 never prepends a BOS token
    if v.chat_template:
        w.add_chat_template(v.chat_template)
    if v.normalizer:
        w.add_string(NORMALIZER_KEY, v.normalizer)
