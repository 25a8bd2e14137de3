"""Streaming generation over any Session: incremental detokenization, timing, multi-turn chat with KV reuse.

Runtime-agnostic: only the Session protocol (append through the KV cache, encode/decode, chat_ids,
stop_ids) and the shared Sampler are used, so every runtime streams and samples the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .base import Session
from .sampling import Sampler


class TextStream:
    """Turns a token stream into text pieces, emitting only complete UTF-8 characters.

    A byte-level BPE token may hold part of a multi-byte character; its decoding then ends in U+FFFD and
    is held back until the following tokens complete it. Text is re-decoded from a short window (the
    previous emitted token onward) so the cost per token stays constant.
    """

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self.ids: list[int] = []
        self._prefix = 0  # start of the re-decode window
        self._read = 0  # tokens already emitted as text

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self._decode(self.ids[self._prefix : self._read])
        now = self._decode(self.ids[self._prefix :])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return now[len(before) :]
        return ""

    def flush(self) -> str:
        """Whatever is held back (an incomplete character at the very end is emitted as U+FFFD)."""
        before = self._decode(self.ids[self._prefix : self._read])
        now = self._decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return now[len(before) :] if len(now) > len(before) else ""


@dataclass
class GenerationStats:
    prompt_tokens: int = 0  # tokens fed for this turn (after any reused cache)
    generated_tokens: int = 0
    ttft_s: float = 0.0  # prefill + first token
    decode_s: float = 0.0  # from the first token to the last
    reused_tokens: int = 0  # KV-cache tokens kept from the previous turn
    stopped_by: str = "length"  # "stop" (EOS / end of turn), "length", "interrupt"

    @property
    def decode_tps(self) -> float:
        return (
            (self.generated_tokens - 1) / self.decode_s
            if self.generated_tokens > 1 and self.decode_s
            else 0.0
        )

    def line(self) -> str:
        reuse = f" (+{self.reused_tokens} cached)" if self.reused_tokens else ""
        return (
            f"[prompt {self.prompt_tokens} tokens{reuse}, generated {self.generated_tokens} tokens, "
            f"TTFT {1000 * self.ttft_s:.0f} ms, decode {self.decode_tps:.1f} tokens/s, stop: {self.stopped_by}]"
        )


def stream_generate(
    session: Session,
    prompt_ids: list[int],
    max_new_tokens: int,
    sampler: Sampler | None = None,
    on_text: Callable[[str], None] = lambda s: None,
    keep_cache: bool = False,
    stop_ids: Iterable[int] | None = None,
) -> tuple[list[int], GenerationStats]:
    """Generate, calling on_text with each complete piece of text; the stop token itself is not shown.

    Ctrl-C ends generation early (stats.stopped_by == "interrupt"); the KV cache is then in an unknown
    state and the caller should reset the session before reusing it.
    """
    stops = session.stop_ids() if stop_ids is None else set(stop_ids)
    stats = GenerationStats(prompt_tokens=len(prompt_ids))
    stream = TextStream(session.decode)
    out: list[int] = []
    t0 = time.perf_counter()
    t_first = t_last = t0
    try:
        for tok in session.generate(
            prompt_ids, max_new_tokens, sampler, stop_ids=stops, keep_cache=keep_cache
        ):
            t_last = time.perf_counter()
            if not out:
                t_first = t_last
            out.append(tok)
            if tok in stops:
                stats.stopped_by = "stop"
                break
            on_text(stream.push(tok))
    except KeyboardInterrupt:
        stats.stopped_by = "interrupt"
    on_text(stream.flush())
    stats.generated_tokens = len(out)
    stats.ttft_s = t_first - t0 if out else 0.0
    stats.decode_s = t_last - t_first
    return out, stats


@dataclass
class ChatTurn:
    user: str
    reply: str
    context_ids: list[int]  # the whole conversation so far rendered by the chat template (what the model saw)
    generated_ids: list[int]
    stats: GenerationStats


@dataclass
class Chat:
    """A conversation on one session that keeps the KV cache between turns whenever it is still valid.

    Each turn renders the whole conversation with the model's chat template (so the tokens always equal
    the tokenizer's own apply_chat_template); the cache is reused when the tokens it holds are a prefix
    of that rendering (true unless the reply re-tokenizes differently from how it was generated), and
    the session is reset and re-prefilled otherwise.
    """

    session: Session
    max_new_tokens: int = 256
    sampler: Sampler | None = None
    system: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)
    turns: list[ChatTurn] = field(default_factory=list)
    _history: list[int] = field(default_factory=list)  # cached tokens + the last generated (never fed) one

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.session.reset()
        self._history = []

    def _reusable(self, ids: list[int]) -> int:
        """How many leading tokens of `ids` are already in the KV cache (0: start over)."""
        n = self.session.n_cached
        h = self._history
        if n == 0 or len(h) != n + 1 or len(ids) <= n or ids[: len(h)] != h:
            return 0
        return n

    def say(self, user: str, on_text: Callable[[str], None] = lambda s: None) -> ChatTurn:
        messages = [*self.messages, {"role": "user", "content": user}]
        ids = list(self.session.chat_ids(messages))
        reuse = self._reusable(ids)
        gen, stats = stream_generate(
            self.session, ids[reuse:], self.max_new_tokens, self.sampler, on_text, keep_cache=reuse > 0
        )
        stats.reused_tokens = reuse
        stops = self.session.stop_ids()
        reply = self.session.decode([t for t in gen if t not in stops])
        self.messages = [*messages, {"role": "assistant", "content": reply}]
        if stats.stopped_by == "interrupt":
            self.session.reset()
            self._history = []
        else:
            self._history = ids + gen
        turn = ChatTurn(user, reply, ids, gen, stats)
        self.turns.append(turn)
        return turn
