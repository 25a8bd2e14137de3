"""llama.cpp (llama-cpp-python) runtime for GGUF files: per-position logits, KV-cache decode, generation.

The KV cache is kept in float32 (type_k / type_v) and flash attention off, so an f32 GGUF matches the
transformers reference to float32 rounding (llama.cpp's default f16 cache alone costs ~4e-3 in logits).
"""

from __future__ import annotations

import ctypes
import struct
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ..errors import ArtifactError
from .base import Session

GGUF_MAGIC = b"GGUF"
_QUIET = None  # keeps the ctypes callback alive


def quiet_llama_logs() -> None:
    """Route llama.cpp / ggml logging to a no-op (it prints every load and quantize step otherwise)."""
    global _QUIET
    if _QUIET is not None:
        return
    import llama_cpp

    @llama_cpp.llama_log_callback
    def _noop(level, text, user_data):  # noqa: ARG001
        return None

    _QUIET = _noop
    llama_cpp.llama_log_set(_QUIET, ctypes.c_void_p())


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
        field = reader.fields.get(f"{arch}.context_length")
        if field is not None:
            out["context_length"] = int(field.parts[field.data[0]][0])
    return out


def file_type_name(file_type: int | None) -> str:
    """general.file_type as our quant names: 0 -> "f32", 2 -> "q4_0", 15 -> "q4_k_m" (the file's main type)."""
    from gguf import LlamaFileType

    try:
        name = LlamaFileType(file_type).name
    except ValueError:
        return "f32" if file_type is None else f"file_type_{file_type}"
    return "f32" if name == "ALL_F32" else name.removeprefix("MOSTLY_").lower()


class LlamaCppSession(Session):
    runtime = "llama.cpp"
    format = "gguf"

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
        quiet_llama_logs()
        n_ctx = n_ctx or min(self.meta.get("context_length", 4096), 4096)
        try:
            self.llm = llama_cpp.Llama(
                model_path=str(self.path),
                n_ctx=n_ctx,
                n_batch=512,
                n_ubatch=512,
                n_threads=threads,
                n_threads_batch=threads,
                type_k=llama_cpp.GGML_TYPE_F32,
                type_v=llama_cpp.GGML_TYPE_F32,
                flash_attn=False,
                logits_all=False,  # we request every position's logits per batch ourselves
                verbose=False,
            )
        except (ValueError, RuntimeError) as e:
            raise ArtifactError(
                f"llama.cpp cannot load this GGUF file ({' '.join(str(e).split())})", self.path
            ) from None
        self.n_ctx = n_ctx
        self.n_vocab = self.llm.n_vocab()
        self._n = 0

    # -- KV cache ---------------------------------------------------------------------------------
    def reset(self) -> None:
        import llama_cpp

        mem = llama_cpp.llama_get_memory(self.llm.ctx)
        llama_cpp.llama_memory_clear(mem, True)
        self._n = 0

    @property
    def n_cached(self) -> int:
        return self._n

    def append(self, ids: Sequence[int]) -> np.ndarray:
        ids = [int(i) for i in ids]
        if self._n + len(ids) > self.n_ctx:
            raise ValueError(f"sequence of {self._n + len(ids)} tokens exceeds the context of {self.n_ctx}")
        out = np.empty((len(ids), self.n_vocab), np.float32)
        step = self.llm.n_batch
        batch, ctx = self.llm._batch, self.llm._ctx
        for start in range(0, len(ids), step):
            chunk = ids[start : start + step]
            batch.set_batch(batch=chunk, n_past=self._n, logits_all=True)
            ctx.decode(batch)
            logits = np.ctypeslib.as_array(ctx.get_logits(), shape=(len(chunk) * self.n_vocab,))
            out[start : start + len(chunk)] = logits.reshape(len(chunk), self.n_vocab)
            self._n += len(chunk)
        return out

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
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.close()
            self.llm = None
