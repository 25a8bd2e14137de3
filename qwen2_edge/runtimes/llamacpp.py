"""llama.cpp (llama-cpp-python) runtime for GGUF files: per-position logits, KV-cache decode, generation.

Runs a file the way llama.cpp deploys it: an f16 KV cache by default (`kv_cache="f32"` for parity with
transformers, "q8_0"/"q4_0" to save memory), flash attention where the cache type wants it, the context
up to the model's limit, and sliding layers in a cache of their window (`swa_full` off) sized so that a
decode step far past the window costs what it costs at the window (see `ubatch_for_window`).
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import struct
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ArtifactError, UnsupportedError
from ..fsutil import FileWatch
from .base import Session

GGUF_MAGIC = b"GGUF"
_QUIET = None  # keeps the ctypes callback alive
_CAPTURED: list[str] | None = None  # llama.cpp's log lines while `captured_llama_logs` is active


def quiet_llama_logs() -> None:
    """Route llama.cpp / ggml logging away from stderr (it prints every load and quantize step otherwise);
    `captured_llama_logs` can still read it."""
    global _QUIET
    if _QUIET is not None:
        return
    import llama_cpp

    @llama_cpp.llama_log_callback
    def _quiet(level, text, user_data):  # noqa: ARG001
        if _CAPTURED is not None:
            _CAPTURED.append(text.decode("utf-8", errors="replace"))

    _QUIET = _quiet
    llama_cpp.llama_log_set(_QUIET, ctypes.c_void_p())


@contextlib.contextmanager
def captured_llama_logs() -> Iterator[list[str]]:
    """The log lines llama.cpp writes inside the block (what it reports about the buffers it allocates)."""
    global _CAPTURED
    quiet_llama_logs()
    lines: list[str] = []
    _CAPTURED = lines
    try:
        yield lines
    finally:
        _CAPTURED = None


def has_gguf_magic(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def check_gguf(path: Path) -> dict:
    """Validate a GGUF file before llama.cpp sees it: magic, readable header, tensor data inside the file.
    Returns the header's key/value fields (name -> python value) for the keys we need."""
    if not path.is_file():
        raise ArtifactError("no such GGUF file", path)
    with path.open("rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[:4] != GGUF_MAGIC:
        raise ArtifactError("not a GGUF file (bad magic; expected 'GGUF')", path)
    (version,) = struct.unpack("<I", head[4:8])
    if version not in (2, 3):
        raise ArtifactError(f"unsupported GGUF version {version}", path)
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
        size = path.stat().st_size
        for t in reader.tensors:
            if t.data_offset + t.n_bytes > size:
                raise ValueError(f"tensor {t.name} ends beyond the end of the file")
    except Exception as e:  # numpy/struct errors from a cut-off file
        raise ArtifactError(f"truncated or corrupt GGUF file ({' '.join(str(e).split())})", path) from None
    out = {}
    for key in ("general.architecture", "tokenizer.chat_template", "qwen2_edge.tokenizer.normalizer"):
        field = reader.fields.get(key)
        if field is not None:
            out[key] = bytes(field.parts[field.data[0]]).decode("utf-8")
    field = reader.fields.get("general.file_type")
    if field is not None:
        out["file_type"] = int(field.parts[field.data[0]][0])
    arch = out.get("general.architecture")
    if arch is not None:
        # what sizing the context and the KV cache needs: ints, and the per-layer sliding pattern
        for key in _ARCH_KEYS:
            field = reader.fields.get(f"{arch}.{key}")
            if field is not None:
                value = field.contents()
                out[key] = [bool(v) for v in value] if isinstance(value, list) else int(value)
    return out


_ARCH_KEYS = (
    "context_length",
    "embedding_length",
    "block_count",
    "attention.head_count",
    "attention.key_length",
    "attention.value_length",
    "attention.sliding_window",
    "attention.sliding_window_pattern",
)


def file_type_name(file_type: int | None) -> str:
    """general.file_type as our quant names: 0 -> "f32", 2 -> "q4_0", 15 -> "q4_k_m" (the file's main type)."""
    from gguf import LlamaFileType

    try:
        name = LlamaFileType(file_type).name
    except ValueError:
        return "f32" if file_type is None else f"file_type_{file_type}"
    return "f32" if name == "ALL_F32" else name.removeprefix("MOSTLY_").lower()


# -- how a KV-cache precision runs in llama.cpp ---------------------------------------------------------
@dataclass(frozen=True)
class CacheType:
    ggml_type: str  # GGML type name: llama_cpp.GGML_TYPE_<name>, gguf.GGMLQuantizationType[<name>]
    flash_attn: bool

    @property
    def block(self) -> tuple[int, int]:
        """(elements, bytes) of one storage block: f16 (1, 2), q8_0 (32, 34)."""
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        return GGML_QUANT_SIZES[GGMLQuantizationType[self.ggml_type]]


# One row per KV-cache precision (runtimes/options.py names). Flash attention, pinned llama.cpp:
# - a quantized V cache requires it (llama_init_from_model refuses the context otherwise);
# - with an f32 cache llama.cpp casts K and V to f16 in front of it on every step (llama-graph.cpp
#   build_attn_mha), so f32 keeps it off and stays the exact parity path;
# - f16: llama.cpp's default (flash_attn_type auto) turns it on for the CPU backend, whose kernel also
#   skips masked cells, so the sliding cache's padding costs nothing there.
CACHE_TYPES: dict[str, CacheType] = {
    "f32": CacheType("F32", flash_attn=False),
    "f16": CacheType("F16", flash_attn=True),
    "q8_0": CacheType("Q8_0", flash_attn=True),
    "q4_0": CacheType("Q4_0", flash_attn=True),
}

N_BATCH = 512  # tokens per llama_decode call (and rows of logits llama.cpp keeps for one call)
MIN_UBATCH = 64  # the smallest compute step we let a sliding window shrink n_ubatch to
SWA_PAD = 256  # llama.cpp pads the sliding cache and the attended cell count to 256 cells


def _pad(n: int, to: int) -> int:
    return -(-n // to) * to


def ubatch_for_window(window: int | None, n_ctx: int) -> int:
    """Tokens per llama.cpp compute step (n_ubatch) for a model whose sliding layers have `window`.

    With swa_full off llama.cpp gives the sliding layers a ring of pad256(window + n_ubatch) cells
    (llama-kv-cache-iswa.cpp: one ubatch must fit beside the window) and, without flash attention, a
    decode step attends every filled cell of it: at context = window that is pad256(window) cells, far
    past it the whole ring. n_ubatch = 512 made that 768 cells for a window of 128, 3x the 256 attended
    at the window. So we take the largest n_ubatch whose ring is as small as MIN_UBATCH allows
    (window 128 -> 128; 64 -> 192; 512 -> 256), which also keeps the sliding layers' memory at about
    their window. A window that does not fit below the context leaves the default.
    """
    if not window or window + MIN_UBATCH >= n_ctx:
        return N_BATCH
    return min(N_BATCH, _pad(window + MIN_UBATCH, SWA_PAD) - window)


@dataclass(frozen=True)
class KvCacheUsage:
    """One of llama.cpp's KV caches: the full-attention layers' or the sliding layers'."""

    layers: int
    cells: int | None  # cells allocated per layer at creation, as llama.cpp reported them
    # K + V buffers of all its layers, allocated (and zeroed) at creation, as llama.cpp reported them: to
    # 0.01 MiB, the precision of its report
    allocated_bytes: int | None
    held_bytes: int  # K/V bytes the sequence holds in it now, exact (llama.cpp's state serializer)


# What llama.cpp's KV-cache constructors log (llama-kv-cache.cpp, llama-kv-cache-iswa.cpp, pinned).
_LOG_SIZE = re.compile(r"llama_kv_cache: size = +([\d.]+) MiB \( *(\d+) cells, +(\d+) layers")
_LOG_ISWA = re.compile(r"creating +(non-SWA|SWA) KV cache")


class LlamaCppSession(Session):
    runtime = "llama.cpp"
    format = "gguf"
    kv_cache_types = tuple(CACHE_TYPES)
    default_kv_cache = "f16"  # llama.cpp's own default

    def __init__(
        self,
        path: str | Path,
        threads: int | None = None,
        n_ctx: int | None = None,
        kv_cache: str | None = None,
    ) -> None:
        import llama_cpp

        self.path = Path(path)
        self.kv_cache = self.resolve_kv_cache(kv_cache)
        self.meta = check_gguf(self.path)
        self.quant = file_type_name(self.meta.get("file_type"))
        limit = self.meta.get("context_length")
        if n_ctx is not None and limit is not None and n_ctx > limit:
            raise UnsupportedError(f"context {n_ctx} exceeds the model's context_length {limit}", self.path)
        # Default: the model's limit. Only full-attention layers pay for it (n_ctx cells each, allocated
        # and zeroed at creation); callers that know how many tokens they need pass n_ctx.
        self.n_ctx = n_ctx or limit or 4096
        cache = CACHE_TYPES[self.kv_cache]
        self._check_cache_blocks(cache)
        self.n_ubatch = ubatch_for_window(self.window, self.n_ctx)
        quiet_llama_logs()
        # llama.cpp maps the file: one truncated in place under it would end the process with SIGBUS.
        self._watch = FileWatch(self.path)
        try:
            with captured_llama_logs() as log:
                self.llm = llama_cpp.Llama(
                    model_path=str(self.path),
                    n_ctx=self.n_ctx,
                    n_batch=N_BATCH,
                    n_ubatch=self.n_ubatch,
                    n_threads=threads,
                    n_threads_batch=threads,
                    type_k=getattr(llama_cpp, f"GGML_TYPE_{cache.ggml_type}"),
                    type_v=getattr(llama_cpp, f"GGML_TYPE_{cache.ggml_type}"),
                    flash_attn=cache.flash_attn,
                    swa_full=False,  # sliding layers: a cache of their window, not of the context
                    logits_all=False,  # we request every position's logits per batch ourselves
                    verbose=False,
                )
        except (ValueError, RuntimeError) as e:
            self._watch.close()
            raise ArtifactError(
                f"llama.cpp cannot load this GGUF file ({' '.join(str(e).split())})", self.path
            ) from None
        self._allocated = _allocated_caches(log)
        self.n_vocab = self.llm.n_vocab()
        self._batch_size = self.llm.n_batch
        self._batch = llama_cpp.llama_batch_init(self._batch_size, 0, 1)
        b = self._batch
        for i in range(self._batch_size):  # one sequence, logits at every position: set once
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = 1
        self._tokens = np.ctypeslib.as_array(b.token, shape=(self._batch_size,))
        self._pos = np.ctypeslib.as_array(b.pos, shape=(self._batch_size,))
        self._want = np.ctypeslib.as_array(b.logits, shape=(self._batch_size,))  # which positions output logits
        self._n = 0

    # -- geometry -----------------------------------------------------------------------------------
    @property
    def window(self) -> int | None:
        """The sliding layers' window (None: no layer slides, or only by a window no context reaches,
        which our exporter writes where llama.cpp's graph needs a sliding layer)."""
        pattern = self.meta.get("attention.sliding_window_pattern")
        w = self.meta.get("attention.sliding_window")
        limit = self.meta.get("context_length")
        if not w or (pattern is not None and not any(pattern)) or (limit and w >= limit):
            return None
        return w

    @property
    def kv_bytes_per_element(self) -> float:
        """Bytes one cached K or V element takes (the bench's byte model reads it)."""
        elements, size = CACHE_TYPES[self.kv_cache].block
        return size / elements

    def _check_cache_blocks(self, cache: CacheType) -> None:
        """A quantized cache stores each head's row in blocks (q8_0/q4_0: 32): llama.cpp refuses a
        head size that is not a multiple, with a log line only; say it in one line instead."""
        block = cache.block[0]
        m = self.meta
        default = m["embedding_length"] // m["attention.head_count"]
        sizes = {m.get("attention.key_length", default), m.get("attention.value_length", default)}
        bad = sorted(h for h in sizes if h % block)
        if bad:
            ok = ", ".join(k for k, c in CACHE_TYPES.items() if all(h % c.block[0] == 0 for h in sizes))
            raise UnsupportedError(
                f"llama.cpp cannot hold a {self.kv_cache} KV cache for this model: its head size {bad[0]} is "
                f"not a multiple of {self.kv_cache}'s block of {block} (choose {ok})",
                self.path,
            )

    # -- KV cache -----------------------------------------------------------------------------------
    def reset(self) -> None:
        import llama_cpp

        # data=False: forget the cells without rewriting the buffers (zeroed at creation; every value a
        # later step reads is one it wrote), which would cost a pass over the whole cache per reset.
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.llm.ctx), False)
        self._n = 0

    @property
    def n_cached(self) -> int:
        return self._n

    def append(self, ids: Sequence[int], last_only: bool = False) -> np.ndarray:
        import llama_cpp

        ids = [int(i) for i in ids]
        if self._n + len(ids) > self.n_ctx:
            raise ValueError(
                f"sequence of {self._n + len(ids)} tokens exceeds the context of {self.n_ctx} "
                f"(n_ctx; the model allows up to {self.meta.get('context_length')})"
            )
        out = np.empty((1 if last_only else len(ids), self.n_vocab), np.float32)
        step = self._batch_size
        for start in range(0, len(ids), step):
            chunk = ids[start : start + step]
            n = len(chunk)
            self._tokens[:n] = chunk
            self._pos[:n] = np.arange(self._n, self._n + n)
            # last_only: one output row per chunk (llama.cpp then sizes its logits buffer for 1 row)
            self._want[:n] = 0 if last_only else 1
            self._want[n - 1] = 1
            self._batch.n_tokens = n
            self._watch.check()
            rc = llama_cpp.llama_decode(self.llm.ctx, self._batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc} at position {self._n}")
            rows = 1 if last_only else n
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(self.llm.ctx), shape=(rows, self.n_vocab))
            if last_only:
                out[0] = logits[0]
            else:
                out[start : start + n] = logits
            self._n += n
        return out

    def kv_cache_usage(self) -> dict[str, KvCacheUsage]:
        """llama.cpp's KV caches ("full", "sliding"): layers, the cells and bytes it allocated at creation
        (its own report), and the K/V bytes the sequence holds in each now. Held bytes are measured by
        llama.cpp's state serializer without copying anything: the state's size minus its size without
        tensor data (LLAMA_STATE_SEQ_FLAGS_ON_DEVICE), for all caches and for the sliding one alone
        (..._PARTIAL_ONLY). A sliding layer holds only the cells its window still sees."""
        import llama_cpp

        ctx = self.llm.ctx
        on_dev = llama_cpp.LLAMA_STATE_SEQ_FLAGS_ON_DEVICE
        partial = llama_cpp.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY

        def held(flags: int) -> int:
            full = llama_cpp.llama_state_seq_get_size_ext(ctx, 0, flags)
            return full - llama_cpp.llama_state_seq_get_size_ext(ctx, 0, flags | on_dev)

        pattern = self.meta.get("attention.sliding_window_pattern")
        n_layers = self.meta.get("block_count", 0)
        n_sliding = sum(pattern) if pattern and self.window else 0
        total = held(0)
        sliding = held(partial) if n_sliding else 0
        alloc = self._allocated
        out = {"full": KvCacheUsage(n_layers - n_sliding, *alloc.get("full", (None, None)), total - sliding)}
        if n_sliding:
            out["sliding"] = KvCacheUsage(n_sliding, *alloc.get("sliding", (None, None)), sliding)
        return out

    def kv_cache_bytes(self) -> int | None:
        """Bytes of the KV buffers llama.cpp allocated for this session, as it reported them (0.01 MiB):
        full-attention layers n_ctx cells, sliding layers their ring, whatever the context so far (it
        allocates and zeroes them at creation). What the sequence holds now: `kv_cache_usage`."""
        sizes = [u.allocated_bytes for u in self.kv_cache_usage().values()]
        return None if None in sizes else sum(sizes)

    # -- text -------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        # llama.cpp skips the tokenizer's Unicode normalizer (Qwen2: NFC); the exporter records it and we
        # apply it here, so decomposed input ("e" + combining accent) tokenizes as in transformers.
        if self.meta.get("qwen2_edge.tokenizer.normalizer") == "NFC":
            text = unicodedata.normalize("NFC", text)
        # special=True: special-token strings in the text become their ids, as the HF tokenizer does
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def decode(self, ids: Iterable[int]) -> str:
        return self.llm.detokenize(list(ids), special=True).decode("utf-8", errors="replace")

    def stop_ids(self) -> set[int]:
        ids = {int(self.llm.token_eos())} - {-1}
        for name in ("<|endoftext|>", "<|im_end|>"):
            toks = self.llm.tokenize(name.encode(), add_bos=False, special=True)
            if len(toks) == 1:
                ids.add(int(toks[0]))
        return ids

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        template = self.meta.get("tokenizer.chat_template")
        if not template:
            raise ArtifactError("the GGUF file has no chat template (tokenizer.chat_template)", self.path)
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        # Same environment settings as transformers' chat-template renderer.
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        text = env.from_string(template).render(messages=messages, add_generation_prompt=True)
        return self.encode(text)

    def close(self) -> None:
        batch = getattr(self, "_batch", None)
        if batch is not None:
            import llama_cpp

            llama_cpp.llama_batch_free(batch)
            self._batch = None
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.close()
            self.llm = None
        watch = getattr(self, "_watch", None)
        if watch is not None:
            watch.close()


def _allocated_caches(log: list[str]) -> dict[str, tuple[int, int]]:
    """(cells, bytes) per cache ("full" / "sliding") from llama.cpp's creation log; {} if it said nothing."""
    out: dict[str, tuple[int, int]] = {}
    kind = "full"
    for line in log:
        if m := _LOG_ISWA.search(line):
            kind = "sliding" if m.group(1) == "SWA" else "full"
        elif m := _LOG_SIZE.search(line):
            out[kind] = (int(m.group(2)), round(float(m.group(1)) * 2**20))
    return out
